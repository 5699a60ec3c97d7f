"""Helpers for the node tests: the node, pod bodies, waiting for and reading pods."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from execmesh.pods.runtimes import available
from tests.support.node import LocalNode

NAMESPACE = "execmesh-test"

needs_sandbox = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="the local node needs root and bubblewrap",
)


class Node(LocalNode):
    def core(self) -> client.CoreV1Api:
        configuration = client.Configuration(host=self.url)
        return client.CoreV1Api(client.ApiClient(configuration))


def python_image() -> str:
    images = [r.image for r in available("local") if r.language == "python"]
    if not images:
        pytest.skip("no python interpreter on this machine")
    return images[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def shell_pod(
    name: str,
    script: str,
    *,
    memory: str = "128Mi",
    cpu: str = "1",
    deadline: int = 20,
    labels: dict[str, str] | None = None,
    tmp: str | None = None,
    image: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if tmp is not None:
        volumes.append({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": tmp}})
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"suite": "node"}},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
            "containers": [
                {
                    "name": "main",
                    "image": image or python_image(),
                    "command": ["/bin/sh", "-c", script],
                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                    "resources": {"limits": {"memory": memory, "cpu": cpu}},
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def with_config(body: dict[str, Any], configmap: str, *mounts: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the ConfigMap ``configmap`` as its volume "config", mounted as ``mounts``
    say (each a volumeMount without its name)."""
    body["spec"]["volumes"].append({"name": "config", "configMap": {"name": configmap}})
    body["spec"]["containers"][0]["volumeMounts"] += [{"name": "config", **m} for m in mounts]
    return body


def wait_terminal(core: client.CoreV1Api, name: str, timeout: float = 60) -> client.V1Pod:
    """Watch one pod until Succeeded or Failed, from the version it was last seen at."""
    pod = core.read_namespaced_pod(name, NAMESPACE)
    deadline = time.monotonic() + timeout
    while pod.status.phase not in ("Succeeded", "Failed"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"pod {name} still {pod.status.phase} after {timeout} s"
        stream = watch.Watch().stream(
            core.list_namespaced_pod,
            NAMESPACE,
            field_selector=f"metadata.name={name}",
            resource_version=pod.metadata.resource_version,
            timeout_seconds=max(1, int(remaining)),
        )
        for event in stream:
            pod = event["object"]
            if pod.status.phase in ("Succeeded", "Failed"):
                break
    return pod


def run_pod(
    core: client.CoreV1Api, body: dict[str, Any], timeout: float = 60
) -> tuple[client.V1Pod, bytes]:
    core.create_namespaced_pod(NAMESPACE, body)
    pod = wait_terminal(core, body["metadata"]["name"], timeout)
    log = core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, _preload_content=False)
    return pod, bytes(log.data)


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    state = pod.status.container_statuses[0].state.terminated
    assert state is not None, pod.status
    return state


def host_processes_with(marker: str) -> list[int]:
    """Pids on the host whose command line or environment contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in seen:
            found.append(int(entry.name))
    return found
