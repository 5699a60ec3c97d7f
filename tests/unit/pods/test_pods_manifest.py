"""The executor's ConfigMap, Pod and NetworkPolicy: restricted profile, hardening, names, data."""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import ApiClient

from execmesh.errors import PermanentError
from execmesh.pods.manifest import (
    DEADLINE_GRACE_SECONDS,
    EXECUTOR_SELECTOR,
    MAX_OUTPUT_BYTES,
    ExecutionSpec,
    InvalidExecutionSpec,
    Limits,
    build_configmap,
    build_network_policy,
    build_pod,
    entrypoint_script,
    resource_name,
)
from execmesh.pods.runtimes import SANDBOX_PATH, RuntimeRegistry, cluster_runtimes

Pod = dict[str, Any]
MiB = 1024 * 1024
REGISTRY = RuntimeRegistry({"cluster": cluster_runtimes(), "local": ()})
PYTHON = REGISTRY.resolve("python", "3.12", "cluster")
GO = REGISTRY.resolve("go", "1.23", "cluster")


def spec(**changes: Any) -> ExecutionSpec:
    fields: dict[str, Any] = {
        "execution_id": "0f9c2a7e-5d1b-4c3e-9a8f-1b2c3d4e5f60",
        "runtime": PYTHON,
        "script": "print(input())",
        "stdin": "hello\n",
        "args": ("--flag", "two words"),
        "limits": Limits(
            cpu_millicores=250,
            memory_bytes=128 * MiB,
            timeout_seconds=2.5,
            output_bytes=65536,
            pids=64,
            tmp_bytes=32 * MiB,
        ),
    }
    return ExecutionSpec(**{**fields, **changes})


def pod(**changes: Any) -> Pod:
    return build_pod(spec(**changes), "executions")


def containers(p: Pod) -> list[Pod]:
    return [*p["spec"].get("initContainers", []), *p["spec"]["containers"]]


def container_or_pod(p: Pod, c: Pod, key: str) -> Any:
    value = c.get("securityContext", {}).get(key)
    return p["spec"].get("securityContext", {}).get(key) if value is None else value


# The Pod Security Standards, baseline and restricted, as published for Kubernetes 1.33:
# each check returns True when the pod complies.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def _host_process_off(p: Pod) -> bool:
    contexts = [p["spec"].get("securityContext", {})] + [
        c.get("securityContext", {}) for c in containers(p)
    ]
    return not any(ctx.get("windowsOptions", {}).get("hostProcess") for ctx in contexts)


def _host_namespaces_off(p: Pod) -> bool:
    return not any(p["spec"].get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def _not_privileged(p: Pod) -> bool:
    return not any(c.get("securityContext", {}).get("privileged") for c in containers(p))


def _baseline_capabilities(p: Pod) -> bool:
    added = [cap for c in containers(p) for cap in _caps(c).get("add", [])]
    return set(added) <= BASELINE_CAPABILITIES


def _no_host_path(p: Pod) -> bool:
    return not any("hostPath" in v for v in p["spec"].get("volumes", []))


def _no_host_ports(p: Pod) -> bool:
    return not any(port.get("hostPort") for c in containers(p) for port in c.get("ports", []))


def _apparmor_not_unconfined(p: Pod) -> bool:
    profiles = [p["spec"].get("securityContext", {}).get("appArmorProfile", {})]
    profiles += [c.get("securityContext", {}).get("appArmorProfile", {}) for c in containers(p)]
    annotations = p["metadata"].get("annotations", {}).values()
    return all(pr.get("type") != "Unconfined" for pr in profiles) and "unconfined" not in (
        annotations
    )


def _selinux_restricted(p: Pod) -> bool:
    options = [p["spec"].get("securityContext", {}).get("seLinuxOptions", {})]
    options += [c.get("securityContext", {}).get("seLinuxOptions", {}) for c in containers(p)]
    allowed = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
    return all(
        o.get("type") in allowed and not o.get("user") and not o.get("role") for o in options
    )


def _proc_mount_default(p: Pod) -> bool:
    return all(
        c.get("securityContext", {}).get("procMount") in (None, "Default") for c in containers(p)
    )


def _seccomp_not_unconfined(p: Pod) -> bool:
    profiles = [p["spec"].get("securityContext", {}).get("seccompProfile", {})]
    profiles += [c.get("securityContext", {}).get("seccompProfile", {}) for c in containers(p)]
    return all(pr.get("type") != "Unconfined" for pr in profiles)


def _safe_sysctls(p: Pod) -> bool:
    sysctls = p["spec"].get("securityContext", {}).get("sysctls", [])
    return all(s["name"] in SAFE_SYSCTLS for s in sysctls)


def _restricted_volume_types(p: Pod) -> bool:
    for volume in p["spec"].get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            return False
    return True


def _no_privilege_escalation(p: Pod) -> bool:
    return all(
        c.get("securityContext", {}).get("allowPrivilegeEscalation") is False for c in containers(p)
    )


def _runs_as_non_root(p: Pod) -> bool:
    return all(container_or_pod(p, c, "runAsNonRoot") is True for c in containers(p))


def _runs_as_non_root_user(p: Pod) -> bool:
    uids = [p["spec"].get("securityContext", {}).get("runAsUser")]
    uids += [c.get("securityContext", {}).get("runAsUser") for c in containers(p)]
    return 0 not in uids


def _seccomp_set(p: Pod) -> bool:
    return all(
        (container_or_pod(p, c, "seccompProfile") or {}).get("type")
        in ("RuntimeDefault", "Localhost")
        for c in containers(p)
    )


def _drops_all_capabilities(p: Pod) -> bool:
    return all(
        "ALL" in _caps(c).get("drop", []) and set(_caps(c).get("add", [])) <= {"NET_BIND_SERVICE"}
        for c in containers(p)
    )


def _caps(c: Pod) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = c.get("securityContext", {}).get("capabilities", {})
    return caps


def _container_security(p: Pod) -> Pod:
    sc: Pod = p["spec"]["containers"][0]["securityContext"]
    return sc


def _pod_security(p: Pod) -> Pod:
    sc: Pod = p["spec"]["securityContext"]
    return sc


# (rule, check, a mutation that breaks the rule: proves the check can fail)
Mutation = Callable[[Pod], object]
RESTRICTED_RULES: list[tuple[str, Callable[[Pod], bool], Mutation]] = [
    (
        "baseline: HostProcess",
        _host_process_off,
        lambda p: _pod_security(p).update(windowsOptions={"hostProcess": True}),
    ),
    ("baseline: host namespaces", _host_namespaces_off, lambda p: p["spec"].update(hostPID=True)),
    (
        "baseline: privileged containers",
        _not_privileged,
        lambda p: _container_security(p).update(privileged=True),
    ),
    (
        "baseline: capabilities",
        _baseline_capabilities,
        lambda p: _container_security(p).update(capabilities={"add": ["SYS_ADMIN"]}),
    ),
    (
        "baseline: hostPath volumes",
        _no_host_path,
        lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    ),
    (
        "baseline: host ports",
        _no_host_ports,
        lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 1}]),
    ),
    (
        "baseline: AppArmor",
        _apparmor_not_unconfined,
        lambda p: _pod_security(p).update(appArmorProfile={"type": "Unconfined"}),
    ),
    (
        "baseline: SELinux",
        _selinux_restricted,
        lambda p: _pod_security(p).update(seLinuxOptions={"type": "spc_t"}),
    ),
    (
        "baseline: /proc mount type",
        _proc_mount_default,
        lambda p: _container_security(p).update(procMount="Unmasked"),
    ),
    (
        "baseline: seccomp",
        _seccomp_not_unconfined,
        lambda p: _container_security(p).update(seccompProfile={"type": "Unconfined"}),
    ),
    (
        "baseline: sysctls",
        _safe_sysctls,
        lambda p: _pod_security(p).update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    ),
    (
        "restricted: volume types",
        _restricted_volume_types,
        lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
    ),
    (
        "restricted: privilege escalation",
        _no_privilege_escalation,
        lambda p: _container_security(p).pop("allowPrivilegeEscalation"),
    ),
    (
        "restricted: running as non-root",
        _runs_as_non_root,
        lambda p: [sc.pop("runAsNonRoot") for sc in (_pod_security(p), _container_security(p))],
    ),
    (
        "restricted: running as non-root user",
        _runs_as_non_root_user,
        lambda p: _container_security(p).update(runAsUser=0),
    ),
    (
        "restricted: seccomp",
        _seccomp_set,
        lambda p: [sc.pop("seccompProfile") for sc in (_pod_security(p), _container_security(p))],
    ),
    (
        "restricted: capabilities",
        _drops_all_capabilities,
        lambda p: _container_security(p).update(capabilities={"drop": ["NET_RAW"]}),
    ),
]


@pytest.mark.parametrize(
    ("check", "breaks"), [pytest.param(c, b, id=n) for n, c, b in RESTRICTED_RULES]
)
def test_the_pod_passes_each_restricted_profile_rule(
    check: Callable[[Pod], bool], breaks: Mutation
) -> None:
    built = pod()
    assert check(built)
    broken = copy.deepcopy(built)
    breaks(broken)
    assert not check(broken), "the rule's check must be able to fail"


def _container(p: Pod) -> Pod:
    c: Pod = p["spec"]["containers"][0]
    return c


def _volume(p: Pod, name: str) -> Pod:
    volume: Pod = next(v for v in p["spec"]["volumes"] if v["name"] == name)
    return volume


def _mount(p: Pod, path: str) -> Pod:
    mount: Pod = next(m for m in _container(p)["volumeMounts"] if m["mountPath"] == path)
    return mount


# (field, how to read it from the pod built by pod(), the value it must have)
HARDENING: list[tuple[str, Callable[[Pod], Any], Any]] = [
    ("runAsNonRoot on the pod", lambda p: _pod_security(p)["runAsNonRoot"], True),
    ("fixed runAsUser", lambda p: _pod_security(p)["runAsUser"], 65532),
    ("fixed runAsGroup", lambda p: _pod_security(p)["runAsGroup"], 65532),
    ("fixed fsGroup", lambda p: _pod_security(p)["fsGroup"], 65532),
    ("container runAsUser", lambda p: _container_security(p)["runAsUser"], 65532),
    ("container runAsGroup", lambda p: _container_security(p)["runAsGroup"], 65532),
    ("pod seccomp", lambda p: _pod_security(p)["seccompProfile"], {"type": "RuntimeDefault"}),
    ("no escalation", lambda p: _container_security(p)["allowPrivilegeEscalation"], False),
    ("capabilities drop ALL", lambda p: _container_security(p)["capabilities"], {"drop": ["ALL"]}),
    ("readOnlyRootFilesystem", lambda p: _container_security(p)["readOnlyRootFilesystem"], True),
    ("privileged off", lambda p: _container_security(p)["privileged"], False),
    ("no service-account token", lambda p: p["spec"]["automountServiceAccountToken"], False),
    ("no service links", lambda p: p["spec"]["enableServiceLinks"], False),
    ("hostNetwork", lambda p: p["spec"]["hostNetwork"], False),
    ("hostPID", lambda p: p["spec"]["hostPID"], False),
    ("hostIPC", lambda p: p["spec"]["hostIPC"], False),
    ("no shared process namespace", lambda p: p["spec"]["shareProcessNamespace"], False),
    ("restartPolicy", lambda p: p["spec"]["restartPolicy"], "Never"),
    (
        "activeDeadlineSeconds is the timeout rounded up plus grace",
        lambda p: p["spec"]["activeDeadlineSeconds"],
        3 + DEADLINE_GRACE_SECONDS,
    ),
    ("cpu limit", lambda p: _container(p)["resources"]["limits"]["cpu"], "250m"),
    ("memory limit", lambda p: _container(p)["resources"]["limits"]["memory"], str(128 * MiB)),
    (
        "ephemeral-storage limit covers both capped streams in the log",
        lambda p: int(_container(p)["resources"]["limits"]["ephemeral-storage"]) >= 2 * 65536,
        True,
    ),
    (
        "requests equal limits (Guaranteed QoS)",
        lambda p: _container(p)["resources"]["requests"] == _container(p)["resources"]["limits"],
        True,
    ),
    (
        "/tmp is a size-limited memory emptyDir",
        lambda p: _volume(p, "tmp")["emptyDir"],
        {"medium": "Memory", "sizeLimit": str(32 * MiB)},
    ),
    ("/tmp mounted", lambda p: _mount(p, "/tmp")["name"], "tmp"),
    ("the program mounted read-only", lambda p: _mount(p, "/execmesh")["readOnly"], True),
    ("program files read-only", lambda p: _volume(p, "program")["configMap"]["defaultMode"], 0o444),
    ("no hostPath volume", lambda p: [v for v in p["spec"]["volumes"] if "hostPath" in v], []),
    ("message path", lambda p: _container(p)["terminationMessagePath"], "/dev/termination-log"),
    ("terminationMessagePolicy", lambda p: _container(p)["terminationMessagePolicy"], "File"),
    ("imagePullPolicy", lambda p: _container(p)["imagePullPolicy"], "IfNotPresent"),
    ("command", lambda p: _container(p)["command"], ["/bin/sh", "/execmesh/entrypoint.sh"]),
    ("no args override", lambda p: "args" in _container(p), False),
    ("no runtimeClassName unless asked", lambda p: "runtimeClassName" in p["spec"], False),
    ("one container only", lambda p: len(containers(p)), 1),
    ("no stdin or tty", lambda p: (_container(p)["stdin"], _container(p)["tty"]), (False, False)),
]  # fmt: skip


@pytest.mark.parametrize(("read", "expected"), [pytest.param(r, e, id=n) for n, r, e in HARDENING])
def test_the_pod_carries_each_extra_hardening_field(
    read: Callable[[Pod], Any], expected: Any
) -> None:
    assert read(pod()) == expected


def test_a_runtime_class_is_set_when_asked_for_gvisor_or_kata() -> None:
    built = build_pod(spec(), "ns", runtime_class_name="gvisor")
    assert built["spec"]["runtimeClassName"] == "gvisor"


def test_the_deadline_rounds_a_whole_second_timeout_exactly() -> None:
    deadline = pod(limits=Limits(timeout_seconds=10))["spec"]["activeDeadlineSeconds"]
    assert deadline == 10 + DEADLINE_GRACE_SECONDS


GO_LIMITS = Limits(memory_bytes=512 * MiB, tmp_bytes=128 * MiB, timeout_seconds=60)


def test_the_image_and_environment_come_from_the_runtime() -> None:
    built = pod(runtime=GO, limits=GO_LIMITS)
    env = {e["name"]: e["value"] for e in _container(built)["env"]}
    assert _container(built)["image"] == "golang:1.23-alpine"
    assert env["PATH"] == SANDBOX_PATH
    assert env["HOME"] == "/tmp"
    assert env["GOCACHE"].startswith("/tmp/")
    assert env["GOTOOLCHAIN"] == "local"


def test_names_are_exec_and_the_id_when_the_id_is_a_dns_label() -> None:
    assert resource_name("0f9c2a7e-5d1b") == "exec-0f9c2a7e-5d1b"
    built = pod()
    assert built["metadata"]["name"] == "exec-0f9c2a7e-5d1b-4c3e-9a8f-1b2c3d4e5f60"
    assert build_configmap(spec(), "ns")["metadata"]["name"] == built["metadata"]["name"]
    assert _volume(built, "program")["configMap"]["name"] == built["metadata"]["name"]


@pytest.mark.parametrize(
    "execution_id", ["01HZX3K9V8M2Q7", "run_42", "a.b", "A" * 63, "x" * 59, "-".join("ab" * 20)]
)
def test_other_ids_get_a_dns_safe_name_that_stays_unique(execution_id: str) -> None:
    name = resource_name(execution_id)
    assert len(name) <= 63
    assert name[0].isalnum() and name[-1].isalnum()
    assert all(ch.isdigit() or ch == "-" or "a" <= ch <= "z" for ch in name)
    assert name == resource_name(execution_id), "derivation is deterministic"


def test_ids_differing_only_in_case_get_different_names() -> None:
    assert resource_name("01HZX3K9") != resource_name("01hzx3k9")


@pytest.mark.parametrize("execution_id", ["", "-leading", "trailing-", "a" * 64, "sp ace", "é"])
def test_an_execution_id_that_cannot_be_a_label_value_is_refused(execution_id: str) -> None:
    with pytest.raises(InvalidExecutionSpec):
        spec(execution_id=execution_id)


def test_labels_select_executors_and_carry_the_execution_id() -> None:
    built = pod(execution_id="01HZX3K9V8M2Q7")
    for obj in (built, build_configmap(spec(execution_id="01HZX3K9V8M2Q7"), "ns")):
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/name": "execmesh",
            "app.kubernetes.io/component": "executor",
            "execmesh.io/execution-id": "01HZX3K9V8M2Q7",
        }
    assert EXECUTOR_SELECTOR == (
        "app.kubernetes.io/name=execmesh,app.kubernetes.io/component=executor"
    )


def test_annotations_carry_the_language_version_and_limits() -> None:
    annotations = pod()["metadata"]["annotations"]
    assert annotations == {
        "execmesh.io/execution-id": "0f9c2a7e-5d1b-4c3e-9a8f-1b2c3d4e5f60",
        "execmesh.io/language": "python",
        "execmesh.io/language-version": "3.12",
        "execmesh.io/timeout-seconds": "2.5",
        "execmesh.io/output-limit-bytes": "65536",
        "execmesh.io/pids-limit": "64",
    }


def test_the_configmap_holds_script_stdin_command_line_limits_and_entry_point() -> None:
    configmap = build_configmap(spec(), "executions")
    assert configmap["metadata"]["namespace"] == "executions"
    assert configmap["immutable"] is True
    assert configmap["data"] == {
        "entrypoint.sh": entrypoint_script(),
        "main.py": "print(input())",
        "source-file": "main.py",
        "argv": "python3 main.py --flag 'two words'",
        "stdin": "hello\n",
        "output-limit-bytes": "65536",
        "timeout-seconds": "2.5",
    }
    assert shlex.split(configmap["data"]["argv"]) == ["python3", "main.py", "--flag", "two words"]
    assert entrypoint_script().startswith("#!/bin/sh\n")


def test_without_stdin_the_configmap_has_no_stdin_key() -> None:
    assert "stdin" not in build_configmap(spec(stdin=None), "ns")["data"]


def test_a_program_too_large_for_a_configmap_is_refused() -> None:
    with pytest.raises(InvalidExecutionSpec, match="bytes"):
        build_configmap(spec(stdin="x" * 1024 * 1024), "ns")


def test_arguments_with_nul_bytes_are_refused() -> None:
    with pytest.raises(InvalidExecutionSpec):
        spec(args=("a\0b",))


@pytest.mark.parametrize(
    "limits",
    [
        {"cpu_millicores": 0},
        {"memory_bytes": 1024},
        {"timeout_seconds": 0},
        {"timeout_seconds": -1},
        {"output_bytes": MAX_OUTPUT_BYTES + 1},
        {"pids": 1},
        {"tmp_bytes": 512 * MiB, "memory_bytes": 256 * MiB},
    ],
)
def test_limits_out_of_range_are_a_permanent_error(limits: dict[str, Any]) -> None:
    with pytest.raises(PermanentError, match="limits out of range"):
        Limits(**limits)


def test_the_network_policy_denies_all_ingress_and_egress_of_executors() -> None:
    policy = build_network_policy("executions")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == "executions"
    assert policy["spec"] == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "execmesh",
                "app.kubernetes.io/component": "executor",
            }
        },
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [],
    }
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod()["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("build", "model"),
    [
        (lambda: pod(), "V1Pod"),
        (lambda: build_pod(spec(), "ns", runtime_class_name="kata"), "V1Pod"),
        (lambda: build_configmap(spec(), "ns"), "V1ConfigMap"),
        (lambda: build_network_policy("ns"), "V1NetworkPolicy"),
    ],
    ids=["pod", "pod-with-runtime-class", "configmap", "network-policy"],
)
def test_objects_round_trip_through_the_official_client_models_unchanged(
    build: Callable[[], Pod], model: str
) -> None:
    """Every key is a real field in its real camelCase spelling: unknown keys would be dropped."""
    client = ApiClient()
    body = build()
    typed = client.deserialize(json.dumps(body), model, "application/json")
    assert client.sanitize_for_serialization(typed) == body  # type: ignore[no-untyped-call]


def test_a_compiled_runtime_gets_its_build_command_in_the_configmap() -> None:
    data = build_configmap(spec(runtime=GO, limits=GO_LIMITS), "ns")["data"]
    assert data["build-argv"] == "go build -o main main.go"
    assert data["argv"] == "./main --flag 'two words'"
    assert "build-argv" not in build_configmap(spec(), "ns")["data"]


@pytest.mark.parametrize(
    "limits",
    [
        Limits(memory_bytes=256 * MiB, tmp_bytes=128 * MiB, timeout_seconds=60),
        Limits(memory_bytes=512 * MiB, tmp_bytes=64 * MiB, timeout_seconds=60),
        Limits(memory_bytes=512 * MiB, tmp_bytes=128 * MiB, timeout_seconds=10),
    ],
    ids=["memory", "tmp", "timeout"],
)
def test_limits_below_what_the_runtime_needs_to_build_are_refused_clearly(limits: Limits) -> None:
    with pytest.raises(InvalidExecutionSpec, match=r"go 1\.23 needs at least 512 MiB of memory"):
        spec(runtime=GO, limits=limits)
