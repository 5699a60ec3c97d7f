from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from execmesh.node.sandbox import (
    DEFAULT_PATH,
    DEFAULT_UID,
    PODEXEC,
    SLOT,
    HostPaths,
    MissingConfigMap,
    NodeLimits,
    PodRejected,
    launch_spec,
    parked_argv,
    podexec_fields,
    sandbox_argv,
    sandbox_spec,
    validate,
)
from execmesh.pods.manifest import ExecutionSpec, Limits, build_configmap, build_pod
from execmesh.pods.runtimes import Runtime

MiB = 1024 * 1024
RUNTIME = Runtime(
    "python",
    "3.11",
    "python:3.11-slim",
    "main.py",
    ("python3", "main.py"),
    ("python3", "--version"),
    (("PYTHONDONTWRITEBYTECODE", "1"),),
)


def pod(**container: Any) -> dict[str, Any]:
    base = {"name": "c", "image": "i", "command": ["/bin/sh", "-c", "true"]}
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{**base, **container}]},
    }


HOST = HostPaths(
    slot_dir=Path("/data/run/slot-1"),
    etc_dir=Path("/data/etc"),
    cgroup_mounts={"/sys/fs/cgroup/memory": Path("/sys/fs/cgroup/memory/n/u")},
    root_links={"/bin": "usr/bin"},
    usr_local_keep=("go",),
    podexec=Path("/opt/execmesh-podexec"),
)


def manifest_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    spec = ExecutionSpec(
        "e1", RUNTIME, "print(1)", limits=Limits(cpu_millicores=250, memory_bytes=128 * MiB)
    )
    body = build_pod(spec, "ns")
    body["metadata"]["uid"] = "u"
    configmap = build_configmap(spec, "ns")
    return body, {configmap["metadata"]["name"]: configmap}


def test_the_manifest_pod_maps_to_its_limits_uid_volumes_and_deadline() -> None:
    body, configmaps = manifest_pod()
    spec = sandbox_spec(body, configmaps, NodeLimits())
    assert (spec.uid, spec.gid, spec.groups) == (65532, 65532, (65532,))
    assert spec.memory_bytes == 128 * MiB
    assert spec.cpu_millicores == 250
    assert spec.pids == 128  # from the manifest's pids annotation
    assert spec.deadline_seconds == body["spec"]["activeDeadlineSeconds"]
    assert [(m.path, m.size_bytes) for m in spec.tmpfs] == [("/tmp", 64 * MiB)]
    assert {f.path for f in spec.files} >= {"/execmesh/entrypoint.sh", "/execmesh/main.py"}
    assert all(f.mode == 0o444 for f in spec.files)
    assert spec.argv == ("/bin/sh", "/execmesh/entrypoint.sh")
    assert spec.termination_path == "/dev/termination-log"
    assert dict(spec.env)["PYTHONDONTWRITEBYTECODE"] == "1"


def test_a_pod_without_a_security_context_runs_as_the_default_non_root_uid() -> None:
    spec = sandbox_spec(pod(), {}, NodeLimits())
    assert (spec.uid, spec.gid, spec.groups) == (DEFAULT_UID, DEFAULT_UID, ())
    assert [(m.path, m.size_bytes) for m in spec.tmpfs] == [("/tmp", NodeLimits().tmp_bytes)]
    assert spec.memory_bytes is None and spec.cpu_millicores is None


def test_the_ephemeral_storage_limit_bounds_the_default_tmp_and_the_log() -> None:
    body = pod(resources={"limits": {"ephemeral-storage": "2Mi"}})
    spec = sandbox_spec(body, {}, NodeLimits())
    assert spec.tmpfs[0].size_bytes == 2 * MiB
    assert spec.log_bytes == 2 * MiB


def test_cpu_quantities_become_millicores() -> None:
    for quantity, millicores in (("500m", 500), ("1", 1000), ("1.5", 1500), ("2", 2000)):
        spec = sandbox_spec(pod(resources={"limits": {"cpu": quantity}}), {}, NodeLimits())
        assert spec.cpu_millicores == millicores


def test_a_missing_configmap_is_waited_for_unless_optional() -> None:
    body = pod(volumeMounts=[{"name": "v", "mountPath": "/config"}])
    body["spec"]["volumes"] = [{"name": "v", "configMap": {"name": "cm"}}]
    with pytest.raises(MissingConfigMap):
        sandbox_spec(body, {}, NodeLimits())
    body["spec"]["volumes"][0]["configMap"]["optional"] = True
    assert sandbox_spec(body, {}, NodeLimits()).files == ()


def test_configmap_items_and_sub_paths_place_single_keys() -> None:
    configmaps = {"cm": {"data": {"a": "1", "b": "2"}}}
    body = pod(volumeMounts=[{"name": "v", "mountPath": "/etc/app.conf", "subPath": "conf/a"}])
    items = [{"key": "a", "path": "conf/a", "mode": 0o400}, {"key": "b", "path": "b"}]
    body["spec"]["volumes"] = [{"name": "v", "configMap": {"name": "cm", "items": items}}]
    files = sandbox_spec(body, configmaps, NodeLimits()).files
    assert [(f.path, f.content, f.mode) for f in files] == [("/etc/app.conf", b"1", 0o400)]


def test_a_configmap_key_with_a_nul_is_no_file_name() -> None:
    body = pod(volumeMounts=[{"name": "v", "mountPath": "/config"}])
    body["spec"]["volumes"] = [{"name": "v", "configMap": {"name": "cm"}}]
    with pytest.raises(PodRejected):
        sandbox_spec(body, {"cm": {"data": {"a\0--bind": "x"}}}, NodeLimits())


def test_an_item_path_cannot_leave_its_volume() -> None:
    body = pod(volumeMounts=[{"name": "v", "mountPath": "/config"}])
    items = [{"key": "a", "path": "../../etc/passwd"}]
    body["spec"]["volumes"] = [{"name": "v", "configMap": {"name": "cm", "items": items}}]
    with pytest.raises(PodRejected):
        sandbox_spec(body, {"cm": {"data": {"a": "x"}}}, NodeLimits())


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["spec"]["containers"].append(dict(p["spec"]["containers"][0])),
        lambda p: p["spec"].update(hostNetwork=True),
        lambda p: p["spec"].update(hostPID=True),
        lambda p: p["spec"].update(securityContext={"runAsUser": 0}),
        lambda p: p["spec"]["containers"][0].update(securityContext={"privileged": True}),
        lambda p: p["spec"]["containers"][0].pop("command"),
        lambda p: p["spec"]["containers"][0].update(resources={"limits": {"memory": "lots"}}),
        lambda p: p["spec"].update(securityContext={"runAsGroup": 0}),
        lambda p: p["spec"].update(securityContext={"fsGroup": 0}),
        # NUL separates bubblewrap's options and the program's arguments on their way in.
        lambda p: p["spec"]["containers"][0].update(args=["a\0--bind", "/", "/host"]),
        lambda p: p["spec"]["containers"][0].update(env=[{"name": "A", "value": "\0--bind"}]),
        lambda p: p["spec"]["containers"][0].update(workingDir="/tmp\0"),
        # Mounted files are staged on the host by their mountPath.
        lambda p: p["spec"]["containers"][0].update(
            volumeMounts=[{"name": "v", "mountPath": "../../../etc/cron.d/x"}]
        ),
        lambda p: p["spec"]["containers"][0].update(
            volumeMounts=[{"name": "v", "mountPath": "/x"}, {"name": "w", "mountPath": "/x/"}]
        ),
        lambda p: p["spec"]["containers"][0].update(
            volumeMounts=[{"name": "v", "mountPath": "/x", "subPath": "../k"}]
        ),
        lambda p: p["spec"]["containers"][0].update(
            volumeMounts=[{"name": "v", "mountPath": "/x", "subPath": "/k"}]
        ),
        lambda p: p["spec"]["containers"][0].update(workingDir="tmp"),
        lambda p: p["spec"]["containers"][0].update(terminationMessagePath="termination-log"),
        lambda p: p["spec"].update(securityContext={"seccompProfile": {"type": "Unconfined"}}),
        lambda p: p["spec"]["containers"][0].update(
            securityContext={"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}
        ),
    ],
    ids=[
        "two-containers",
        "host-network",
        "host-pid",
        "root",
        "privileged",
        "no-command",
        "bad-qty",
        "root-group",
        "root-fs-group",
        "nul-in-args",
        "nul-in-env",
        "nul-in-working-dir",
        "relative-mount-path",
        "mount-path-twice",
        "sub-path-up",
        "absolute-sub-path",
        "relative-working-dir",
        "relative-termination-path",
        "unconfined-seccomp",
        "localhost-seccomp",
    ],
)
def test_pods_the_node_cannot_run_safely_are_rejected_at_admission(change: Any) -> None:
    body = pod()
    change(body)
    with pytest.raises(PodRejected):
        validate(body)


def fields(spec: bytes) -> list[str]:
    split = spec.decode().split("\0")
    assert split[-1] == ""  # every field NUL-terminated
    return split[:-1]


def test_the_sandbox_unshares_every_namespace_but_user_and_binds_only_the_image_parts() -> None:
    argv = sandbox_argv(HOST)
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"):
        assert flag in argv
    assert "--die-with-parent" in argv and "--new-session" in argv and "--clearenv" in argv
    binds = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    assert {source for source, _ in binds} == {
        "/usr",
        "/usr/local/go",
        "/data/etc",
        "/opt/execmesh-podexec",
        "/sys/fs/cgroup/memory/n/u",
        "/data/run/slot-1",
    }
    writable = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--bind"]
    assert writable == [("/data/run/slot-1", SLOT)]


def test_nothing_of_a_pod_is_in_its_launchers_sandbox() -> None:
    body, configmaps = manifest_pod()
    spec = sandbox_spec(body, configmaps, NodeLimits())
    argv = " ".join(sandbox_argv(HOST))
    for text in (spec.hostname, spec.termination_path, "/tmp", *spec.argv, *dict(spec.env)):
        assert text not in argv


def test_the_pods_own_mounts_come_from_its_slot_and_the_root_ends_read_only() -> None:
    body, configmaps = manifest_pod()
    spec = sandbox_spec(body, configmaps, NodeLimits())
    launch = fields(launch_spec(spec))
    options = launch[: launch.index("--")]
    binds = [(options[i + 1], options[i + 2]) for i, o in enumerate(options) if "bind" in o]
    assert binds and all(source.startswith(f"{SLOT}/") for source, _ in binds)
    assert {target for _, target in binds} == {f.path for f in spec.files} | {
        "/dev/termination-log"
    }
    assert [o for o in options if o == "--bind"] == ["--bind"]  # only the termination-log
    tmp = options.index("/tmp")
    assert options[tmp - 1 : tmp + 2] == ["--tmpfs", "/tmp", str(64 * MiB)]
    # The slot goes and the root turns read-only after the last mount, before the program.
    last_mount = max(i for i, o in enumerate(options) if o in ("--tmpfs", "--ro-bind", "--bind"))
    assert last_mount < options.index("--umount") < options.index("--remount-ro")
    assert options[options.index("--umount") + 1] == SLOT
    assert options[options.index("--remount-ro") + 1] == "/"
    assert options[options.index("--hostname") + 1] == body["metadata"]["name"]
    assert options[options.index("--fsize") + 1] == str(spec.file_bytes)


def test_the_program_gets_only_the_pods_environment() -> None:
    spec = sandbox_spec(pod(env=[{"name": "A", "value": "x y"}]), {}, NodeLimits())
    options = fields(launch_spec(spec))
    pairs = [(options[i + 1], options[i + 2]) for i, o in enumerate(options) if o == "--setenv"]
    assert dict(pairs) == {"PATH": DEFAULT_PATH, "HOME": "/tmp", "HOSTNAME": "p", "A": "x y"}


def test_privileges_are_dropped_by_podexec_before_the_program_starts() -> None:
    argv = sandbox_argv(HOST)
    bind = argv.index("/opt/execmesh-podexec")
    assert argv[bind - 1 : bind + 2] == ["--ro-bind", "/opt/execmesh-podexec", PODEXEC]
    assert argv[argv.index("--") + 1 :] == [PODEXEC, "3"]
    launch = fields(launch_spec(sandbox_spec(pod(), {}, NodeLimits())))
    assert launch[launch.index("--") + 1 :] == ["65532", "65532", "", "/bin/sh", "-c", "true"]


def test_the_fs_group_is_the_programs_only_supplementary_group() -> None:
    body = pod()
    body["spec"]["securityContext"] = {"fsGroup": 2000, "runAsUser": 1000}
    spec = sandbox_spec(body, {}, NodeLimits())
    assert podexec_fields(spec)[:3] == ["1000", "1000", "2000"]


def test_the_launcher_joins_every_cgroup_before_becoming_bubblewrap() -> None:
    procs = [Path("/cg/memory/u/cgroup.procs"), Path("/cg/pids/u/cgroup.procs")]
    argv = parked_argv(procs, HOST)
    assert argv[:3] == ["/bin/sh", "-c", argv[2]]
    assert argv[4:7] == [str(procs[0]), str(procs[1]), "--"]
    assert argv[7:] == sandbox_argv(HOST)
