"""The executor's Kubernetes objects, built as plain JSON-shaped dicts: no I/O, no client.

One execution is one ConfigMap (the program, its stdin, its command line and the entry point)
and one Pod that mounts it read-only and runs the entry point under the Pod Security
Standards "restricted" profile plus extra hardening. A namespace-wide NetworkPolicy denies
all traffic to and from executor pods. The dicts are what
``kubernetes.client.CoreV1Api().create_namespaced_pod(namespace, body=...)`` accepts.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from execmesh.errors import PermanentError
from execmesh.pods.runtimes import SANDBOX_PATH, Runtime

JsonDict = dict[str, Any]

KiB = 1024
MiB = 1024 * KiB

RUN_AS_ID = 65532  # the conventional "nonroot" uid/gid of distroless images
CONTAINER_NAME = "executor"
CONFIG_MOUNT = "/execmesh"
ENTRYPOINT_KEY = "entrypoint.sh"
TERMINATION_LOG = "/dev/termination-log"
# Time for the entry point to stop a program at its own deadline and still report, before
# the kubelet's activeDeadlineSeconds kills the pod and everything it would have said.
DEADLINE_GRACE_SECONDS = 5
# An object in etcd is capped at 1.5 MiB; stay well under it, the rest is metadata.
MAX_CONFIGMAP_BYTES = 1 * MiB
# The pod log holds both streams; kubelet rotates container logs at 10 MiB by default.
MAX_OUTPUT_BYTES = 4 * MiB

APP_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
EXECUTION_ID_LABEL = "execmesh.io/execution-id"
EXECUTOR_LABELS = {APP_LABEL: "execmesh", COMPONENT_LABEL: "executor"}
EXECUTOR_SELECTOR = ",".join(f"{k}={v}" for k, v in EXECUTOR_LABELS.items())
LANGUAGE_ANNOTATION = "execmesh.io/language"
VERSION_ANNOTATION = "execmesh.io/language-version"
EXECUTION_ID_ANNOTATION = "execmesh.io/execution-id"
PIDS_ANNOTATION = "execmesh.io/pids-limit"
TIMEOUT_ANNOTATION = "execmesh.io/timeout-seconds"
OUTPUT_ANNOTATION = "execmesh.io/output-limit-bytes"
NETWORK_POLICY_NAME = "execmesh-executors-deny-all"

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InvalidExecutionSpec(PermanentError):
    """An execution that no pod can run as asked: bad id, limits, arguments or sizes."""


@dataclass(frozen=True)
class Limits:
    cpu_millicores: int = 500
    memory_bytes: int = 256 * MiB
    timeout_seconds: float = 10.0
    output_bytes: int = 1 * MiB  # per stream
    pids: int = 128
    tmp_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        checks = {
            "cpu_millicores": 10 <= self.cpu_millicores <= 64_000,
            "memory_bytes": 16 * MiB <= self.memory_bytes <= 64 * 1024 * MiB,
            "timeout_seconds": 0 < self.timeout_seconds <= 3600,
            "output_bytes": 0 <= self.output_bytes <= MAX_OUTPUT_BYTES,
            "pids": 8 <= self.pids <= 32_768,
            "tmp_bytes": 1 * MiB <= self.tmp_bytes <= self.memory_bytes,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidExecutionSpec(f"limits out of range: {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class ExecutionSpec:
    execution_id: str
    runtime: Runtime
    script: str
    stdin: str | None = None
    args: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not _LABEL_VALUE.match(self.execution_id):
            raise InvalidExecutionSpec(
                f"execution id {self.execution_id!r} must be 1-63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit"
            )
        if any("\0" in arg for arg in self.args):
            raise InvalidExecutionSpec("arguments cannot contain NUL bytes")
        runtime, limits = self.runtime, self.limits
        if (
            limits.memory_bytes < runtime.min_memory_bytes
            or limits.tmp_bytes < runtime.min_tmp_bytes
            or limits.timeout_seconds < runtime.min_timeout_seconds
        ):
            raise InvalidExecutionSpec(
                f"{runtime.language} {runtime.version} needs at least "
                f"{runtime.min_memory_bytes // MiB} MiB of memory, "
                f"{runtime.min_tmp_bytes // MiB} MiB of /tmp and "
                f"{runtime.min_timeout_seconds:g} s to build and run a program; got "
                f"{limits.memory_bytes // MiB} MiB, {limits.tmp_bytes // MiB} MiB and "
                f"{limits.timeout_seconds:g} s"
            )


def resource_name(execution_id: str) -> str:
    """``exec-<id>`` when the id is already a DNS label; otherwise a hash keeps it unique."""
    if _DNS_LABEL.match(execution_id) and len(execution_id) <= 58:
        return f"exec-{execution_id}"
    readable = re.sub(r"[^a-z0-9]+", "-", execution_id.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(execution_id.encode()).hexdigest()[:12]
    return f"exec-{readable}-{digest}" if readable else f"exec-{digest}"


def pod_labels(spec: ExecutionSpec) -> dict[str, str]:
    return {**EXECUTOR_LABELS, EXECUTION_ID_LABEL: spec.execution_id}


def pod_annotations(spec: ExecutionSpec) -> dict[str, str]:
    return {
        EXECUTION_ID_ANNOTATION: spec.execution_id,
        LANGUAGE_ANNOTATION: spec.runtime.language,
        VERSION_ANNOTATION: spec.runtime.version,
        TIMEOUT_ANNOTATION: _decimal(spec.limits.timeout_seconds),
        OUTPUT_ANNOTATION: str(spec.limits.output_bytes),
        # Kubernetes has no per-pod pids field (kubelet's podPidsLimit is per node); the
        # local node reads this, a cluster relies on its kubelet setting.
        PIDS_ANNOTATION: str(spec.limits.pids),
    }


@functools.cache
def entrypoint_script() -> str:
    """The entry point shipped as package data: read once, it is a constant of the build."""
    return resources.files("execmesh.pods").joinpath(ENTRYPOINT_KEY).read_text("utf-8")


def configmap_data(spec: ExecutionSpec) -> dict[str, str]:
    """The files the entry point reads, as ConfigMap keys (see entrypoint.sh's header)."""
    runtime = spec.runtime
    data = {
        ENTRYPOINT_KEY: entrypoint_script(),
        runtime.source_file: spec.script,
        "source-file": runtime.source_file,
        "argv": shlex.join((*runtime.run_command, *spec.args)),
        "output-limit-bytes": str(spec.limits.output_bytes),
        "timeout-seconds": _decimal(spec.limits.timeout_seconds),
    }
    if runtime.build_command:
        data["build-argv"] = shlex.join(runtime.build_command)
    if spec.stdin is not None:
        data["stdin"] = spec.stdin
    size = sum(len(k) + len(v.encode("utf-8")) for k, v in data.items())
    if size > MAX_CONFIGMAP_BYTES:
        raise InvalidExecutionSpec(
            f"script, stdin and arguments take {size} bytes; at most {MAX_CONFIGMAP_BYTES} fit"
        )
    return data


def build_configmap(spec: ExecutionSpec, namespace: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, namespace),
        "data": configmap_data(spec),
        # Nothing may change the program between the request and the run.
        "immutable": True,
    }


def build_pod(
    spec: ExecutionSpec, namespace: str, runtime_class_name: str | None = None
) -> JsonDict:
    name = resource_name(spec.execution_id)
    pod_spec: JsonDict = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": math.ceil(spec.limits.timeout_seconds) + DEADLINE_GRACE_SECONDS,
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "securityContext": _pod_security_context(),
        "containers": [_container(spec)],
        "volumes": [
            {
                "name": "program",
                "configMap": {"name": name, "defaultMode": 0o444},
            },
            {
                # tmpfs: filling it is charged to the pod's memory limit and stopped at once
                # by the kernel, where a disk emptyDir is only noticed by the kubelet's
                # periodic eviction scan, after the node's disk has taken the writes.
                "name": "tmp",
                "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.limits.tmp_bytes)},
            },
        ],
    }
    if runtime_class_name is not None:
        pod_spec["runtimeClassName"] = runtime_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(spec, namespace),
        "spec": pod_spec,
    }


def build_network_policy(namespace: str) -> JsonDict:
    """Deny every ingress and egress of executor pods: no rules means nothing is allowed."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": namespace,
            "labels": dict(EXECUTOR_LABELS),
        },
        "spec": {
            "podSelector": {"matchLabels": dict(EXECUTOR_LABELS)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def _metadata(spec: ExecutionSpec, namespace: str) -> JsonDict:
    return {
        "name": resource_name(spec.execution_id),
        "namespace": namespace,
        "labels": pod_labels(spec),
        "annotations": pod_annotations(spec),
    }


def _pod_security_context() -> JsonDict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(spec: ExecutionSpec) -> JsonDict:
    limits = spec.limits
    resources_: JsonDict = {
        "cpu": f"{limits.cpu_millicores}m",
        "memory": str(limits.memory_bytes),
        # Root is read-only and /tmp is memory: what remains on disk is the log, which
        # holds both capped streams.
        "ephemeral-storage": str(2 * limits.output_bytes + 16 * MiB),
    }
    return {
        "name": CONTAINER_NAME,
        "image": spec.runtime.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", f"{CONFIG_MOUNT}/{ENTRYPOINT_KEY}"],
        "workingDir": "/tmp",
        "env": [{"name": k, "value": v} for k, v in _environment(spec.runtime)],
        "resources": {"requests": dict(resources_), "limits": dict(resources_)},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_ID,
            "runAsGroup": RUN_AS_ID,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "program", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "stdin": False,
        "tty": False,
    }


def _environment(runtime: Runtime) -> list[tuple[str, str]]:
    base = {"PATH": SANDBOX_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    return list({**base, **dict(runtime.env)}.items())


def _decimal(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")
