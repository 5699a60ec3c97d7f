"""What a pod's sandbox is: pure functions from a pod and its ConfigMaps to a bubblewrap argv.

The host's /usr (with the interpreters) stands in for the container image, read-only. The
pod sees nothing else of the host: no /root, /home, /work, no /etc beyond the few files
libraries need, no /sys but its own cgroup, and no network but loopback. It runs as a
non-root uid with no capabilities and no_new_privs, its system calls confined as by a
container runtime's default seccomp profile. bubblewrap (root) builds the namespaces and the
mounts every pod has, ahead of time; execmesh-podexec (podexec.c) waits inside for the pod's
launch spec, adds the pod's own mounts, drops every privilege, installs the seccomp filter and
starts the program.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from execmesh.errors import PermanentError

Obj = dict[str, Any]
MiB = 1024 * 1024

DEFAULT_UID = 65532
DEFAULT_PATH = "/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"
PIDS_ANNOTATION = "execmesh.io/pids-limit"


class PodRejected(PermanentError):
    """A pod the local node will not run (it would be refused at admission)."""


class MissingConfigMap(PermanentError):
    """A pod's ConfigMap volume names a ConfigMap that does not exist (yet)."""


@dataclass(frozen=True)
class NodeLimits:
    """What the node applies when the pod does not say."""

    pids: int = 256
    nofile: int = 1024
    tmp_bytes: int = 64 * MiB
    log_bytes: int = 10 * MiB  # kubelet's default containerLogMaxSize
    max_file_bytes: int = 256 * MiB


@dataclass(frozen=True)
class FileMount:
    path: str  # inside the sandbox
    content: bytes
    mode: int


@dataclass(frozen=True)
class TmpfsMount:
    path: str
    size_bytes: int


@dataclass(frozen=True)
class SandboxSpec:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    hostname: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    memory_bytes: int | None
    cpu_millicores: int | None
    pids: int
    nofile: int
    file_bytes: int
    log_bytes: int
    deadline_seconds: int | None
    termination_path: str
    fallback_to_logs: bool
    tmpfs: tuple[TmpfsMount, ...] = ()
    files: tuple[FileMount, ...] = field(default=())


def _quantity(value: Any) -> float | None:
    if value is None:
        return None
    return float(parse_quantity(str(value)))  # type: ignore[no-untyped-call]


def _security(pod: Obj, container: Obj, key: str) -> Any:
    container_ctx = container.get("securityContext") or {}
    pod_ctx = pod["spec"].get("securityContext") or {}
    return container_ctx.get(key, pod_ctx.get(key))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def validate(pod: Obj) -> None:
    """Refuse at admission what the node cannot run safely or faithfully."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if len(containers) != 1 or spec.get("initContainers") or spec.get("ephemeralContainers"):
        raise PodRejected("the local node runs pods of exactly one container")
    container = containers[0]
    if not container.get("command") and not container.get("args"):
        raise PodRejected("the container needs a command: images have no entry point here")
    # bubblewrap's options and the program's arguments reach the sandbox NUL-separated.
    if any("\0" in text for text in _strings(pod)):
        raise PodRejected("the pod may not contain NUL characters")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            raise PodRejected(f"{flag} is not allowed")
    if _security(pod, container, "privileged"):
        raise PodRejected("privileged containers are not allowed")
    if _security(pod, container, "runAsUser") == 0:
        raise PodRejected("containers may not run as root (runAsUser 0)")
    for field_name in ("runAsGroup", "fsGroup"):
        if _security(pod, container, field_name) == 0:
            raise PodRejected(f"containers may not run in the root group ({field_name} 0)")
    # execmesh-podexec confines every pod's system calls as RuntimeDefault does.
    profile = (_security(pod, container, "seccompProfile") or {}).get("type", "RuntimeDefault")
    if profile != "RuntimeDefault":
        raise PodRejected(f"seccompProfile {profile} is not supported: pods run RuntimeDefault")
    for name in ("cpu", "memory", "ephemeral-storage"):
        try:
            _quantity(((container.get("resources") or {}).get("limits") or {}).get(name))
        except (ValueError, ArithmeticError) as exc:
            raise PodRejected(f"invalid {name} limit: {exc}") from None
    _validate_paths(container)


def _validate_paths(container: Obj) -> None:
    # The node stages mounted files under the pod's slot on the host by their mountPath:
    # a relative one would write outside it, as the node's own (root) user.
    for field_name in ("workingDir", "terminationMessagePath"):
        value = container.get(field_name)
        if value is not None and not _is_absolute(value):
            raise PodRejected(f"{field_name} must be an absolute path, not {value!r}")
    seen: set[str] = set()
    for mount in container.get("volumeMounts") or []:
        path = mount.get("mountPath")
        if not _is_absolute(path):
            raise PodRejected(f"mountPath must be an absolute path, not {path!r}")
        normal = posixpath.normpath(path)
        if normal in seen:
            raise PodRejected(f"mountPath {path!r} is used twice")
        seen.add(normal)
        sub_path = mount.get("subPath")
        if sub_path is not None and (
            not isinstance(sub_path, str) or sub_path.startswith("/") or ".." in sub_path.split("/")
        ):
            raise PodRejected(f"subPath must be a relative path within its volume: {sub_path!r}")


def _is_absolute(path: Any) -> bool:
    return isinstance(path, str) and path.startswith("/")


def sandbox_spec(pod: Obj, configmaps: Mapping[str, Obj], node: NodeLimits) -> SandboxSpec:
    spec = pod["spec"]
    container = spec["containers"][0]
    uid = int(_security(pod, container, "runAsUser") or DEFAULT_UID)
    gid = int(_security(pod, container, "runAsGroup") or uid)
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    limits = (container.get("resources") or {}).get("limits") or {}
    memory = _quantity(limits.get("memory"))
    cpu = _quantity(limits.get("cpu"))
    storage = _quantity(limits.get("ephemeral-storage"))
    tmpfs, files = _volumes(pod, configmaps, node, storage)
    annotations = pod["metadata"].get("annotations") or {}
    pids = int(annotations.get(PIDS_ANNOTATION) or node.pids)
    deadline = spec.get("activeDeadlineSeconds")
    largest_tmpfs = max((mount.size_bytes for mount in tmpfs), default=MiB)
    return SandboxSpec(
        argv=tuple(
            str(a) for a in (container.get("command") or []) + (container.get("args") or [])
        ),
        env=_environment(container, pod),
        workdir=container.get("workingDir") or "/",
        hostname=pod["metadata"]["name"][:63],
        uid=uid,
        gid=gid,
        groups=(int(fs_group),) if fs_group is not None else (),
        memory_bytes=None if memory is None else int(memory),
        cpu_millicores=None if cpu is None else max(1, math.ceil(cpu * 1000)),
        pids=max(8, min(pids, 32768)),
        nofile=node.nofile,
        # Above every tmpfs size, so a full tmpfs says ENOSPC; it bounds the host-side files.
        file_bytes=min(largest_tmpfs + MiB, node.max_file_bytes),
        log_bytes=node.log_bytes if storage is None else min(node.log_bytes, int(storage)),
        deadline_seconds=None if deadline is None else int(deadline),
        termination_path=container.get("terminationMessagePath") or "/dev/termination-log",
        fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        tmpfs=tmpfs,
        files=files,
    )


def _environment(container: Obj, pod: Obj) -> tuple[tuple[str, str], ...]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/tmp", "HOSTNAME": pod["metadata"]["name"]}
    for var in container.get("env") or []:
        if "value" in var or "valueFrom" not in var:
            env[var["name"]] = str(var.get("value", ""))
    return tuple(env.items())


def _volumes(
    pod: Obj, configmaps: Mapping[str, Obj], node: NodeLimits, storage: float | None
) -> tuple[tuple[TmpfsMount, ...], tuple[FileMount, ...]]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    default_tmp = node.tmp_bytes if storage is None else min(node.tmp_bytes, int(storage))
    tmpfs: list[TmpfsMount] = []
    files: list[FileMount] = []
    mounts = pod["spec"]["containers"][0].get("volumeMounts") or []
    for mount in mounts:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodRejected(f"volumeMount {mount['name']!r} names no volume of the pod")
        path = posixpath.normpath(mount["mountPath"])
        if "emptyDir" in volume:
            size = _quantity((volume["emptyDir"] or {}).get("sizeLimit"))
            tmpfs.append(TmpfsMount(path, int(size) if size else default_tmp))
        elif "configMap" in volume:
            files += _configmap_files(volume["configMap"], configmaps, path, mount.get("subPath"))
        else:
            raise PodRejected(f"volume {volume['name']!r}: only emptyDir and configMap exist here")
    if not any(m.path == "/tmp" for m in tmpfs):
        tmpfs.append(TmpfsMount("/tmp", default_tmp))
    return tuple(tmpfs), tuple(files)


def _configmap_files(
    source: Obj, configmaps: Mapping[str, Obj], mount_path: str, sub_path: str | None
) -> list[FileMount]:
    configmap = configmaps.get(source["name"])
    if configmap is None:
        if source.get("optional"):
            return []
        raise MissingConfigMap(f'configmap "{source["name"]}" not found')
    data: dict[str, bytes] = {k: v.encode() for k, v in (configmap.get("data") or {}).items()}
    default_mode = int(source.get("defaultMode", 0o644))
    items = source.get("items") or [{"key": key, "path": key} for key in sorted(data)]
    found = []
    for item in items:
        if item["key"] not in data:
            raise PodRejected(f'configmap "{source["name"]}" has no key {item["key"]!r}')
        relative = posixpath.normpath(item["path"])
        if relative.startswith(("/", "..")) or "\0" in relative:
            raise PodRejected(f"configmap item path {item['path']!r} leaves its volume")
        if sub_path is not None and relative != posixpath.normpath(sub_path):
            continue
        target = mount_path if sub_path is not None else posixpath.join(mount_path, relative)
        found.append(FileMount(target, data[item["key"]], int(item.get("mode", default_mode))))
    return found


@dataclass(frozen=True)
class HostPaths:
    """What a launcher's sandbox is built from on the host; nothing in it is a pod's."""

    slot_dir: Path  # the launcher's scratch, where the node stages its pod's files
    etc_dir: Path  # the node's prepared /etc, bound whole
    cgroup_mounts: Mapping[str, Path]  # path in the sandbox -> the launcher's cgroup directory
    root_links: Mapping[str, str]  # /bin -> usr/bin on merged-/usr hosts
    usr_local_keep: tuple[str, ...]
    podexec: Path  # the built execmesh-podexec, bound into the sandbox
    # False when the node puts the pod in a network namespace of its own before bubblewrap
    # starts (a pooled one, see netns.py); bubblewrap then keeps the one it is born in.
    unshare_net: bool = True


PODEXEC = "/dev/.execmesh-podexec"
SLOT = "/dev/.execmesh-slot"  # the slot directory, inside the sandbox until the pod starts
STAGED_FILES = "files"  # the pod's ConfigMap files, under the slot, by their path inside
TERMINATION_LOG = "termination-log"  # under the slot
SPEC_FD = 3


def sandbox_argv(host: HostPaths, spec_fd: int = SPEC_FD, bwrap: str = "bwrap") -> list[str]:
    """The part of the sandbox that no pod changes, waiting in podexec for a launch spec.

    bubblewrap builds it ahead of time, before the node knows the pod: the namespaces, the
    image's mounts, /proc, /dev, the launcher's cgroups and the slot directory. The pod's own
    part (its hostname, volumes, termination-log, environment, uid and program) arrives on
    ``spec_fd`` (``launch_spec``), and execmesh-podexec applies it.
    """
    # Not --as-pid-1, though faster: a pid 1 that is the program does not die with its
    # parent (the kernel shields a namespace's init from the parent-death signal), so
    # a crashed node would leave the pod running. bubblewrap's own init does die with it.
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid"]
    if host.unshare_net:
        argv.append("--unshare-net")
    argv += ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup"]
    argv += ["--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local"]
    for name in host.usr_local_keep:
        argv += ["--ro-bind", f"/usr/local/{name}", f"/usr/local/{name}"]
    argv += ["--remount-ro", "/usr/local"]
    for path, target in host.root_links.items():
        argv += ["--symlink", target, path]
    argv += ["--ro-bind", str(host.etc_dir), "/etc"]
    argv += ["--proc", "/proc", *DEV, "--ro-bind", str(host.podexec), PODEXEC]
    made = {"/", "/usr", "/etc", "/proc", "/dev", "/dev/shm"}
    for target, directory in host.cgroup_mounts.items():
        argv += [*_parent_dirs(target, made), "--ro-bind", str(directory), target]
    argv += ["--bind", str(host.slot_dir), SLOT, "--clearenv"]
    return [*argv, "--", PODEXEC, str(spec_fd)]


def launch_spec(spec: SandboxSpec) -> bytes:
    """The pod's part of its sandbox, for execmesh-podexec: see podexec.c for the fields."""
    fields = ["--hostname", spec.hostname]
    for mount in spec.tmpfs:
        fields += ["--tmpfs", mount.path, str(mount.size_bytes)]
    for file in spec.files:
        fields += ["--ro-bind", f"{SLOT}/{STAGED_FILES}{file.path}", file.path]
    fields += ["--bind", f"{SLOT}/{TERMINATION_LOG}", spec.termination_path]
    # The slot goes before the program starts, and the root becomes read-only.
    fields += ["--umount", SLOT, "--remount-ro", "/", "--chdir", spec.workdir]
    fields += ["--fsize", str(spec.file_bytes)]
    for name, value in spec.env:
        fields += ["--setenv", name, value]
    return _nul_terminated([*fields, "--", *podexec_fields(spec)])


def _parent_dirs(path: str, made: set[str]) -> list[str]:
    """``--dir`` for each missing ancestor: bubblewrap would create them mode 0700."""
    argv: list[str] = []
    parts = path.strip("/").split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:depth])
        if ancestor not in made:
            made.add(ancestor)
            argv += ["--perms", "0755", "--dir", ancestor]
    return argv


# A /dev of the few devices programs use: bubblewrap's --dev also mounts a devpts instance,
# which costs more than the rest of the sandbox's mounts together, and no pod has a tty.
DEV = [
    "--tmpfs",
    "/dev",
    *(
        arg
        for name in ("null", "zero", "full", "random", "urandom")
        for arg in ("--dev-bind", f"/dev/{name}", f"/dev/{name}")
    ),
    *("--symlink", "/proc/self/fd", "/dev/fd"),
    *("--symlink", "/proc/self/fd/0", "/dev/stdin"),
    *("--symlink", "/proc/self/fd/1", "/dev/stdout"),
    *("--symlink", "/proc/self/fd/2", "/dev/stderr"),
    *("--perms", "1777", "--size", str(16 * MiB), "--tmpfs", "/dev/shm"),
]


def podexec_fields(spec: SandboxSpec) -> list[str]:
    """Who the program runs as, then the program: the launch spec's fields after ``--``."""
    return [str(spec.uid), str(spec.gid), ",".join(map(str, spec.groups)), *spec.argv]


# The wrapper joins the launcher's cgroups and sets rlimits in the process that then becomes
# bubblewrap, so that nothing of the pod ever runs outside its cgroups.
WRAPPER = (
    'for f do [ "$f" = -- ] && break; echo $$ >"$f" || exit 125; shift; done; shift; '
    'ulimit -c 0; ulimit -n "$NOFILE"; exec "$@"'
)


def parked_argv(
    procs_files: Sequence[Path], host: HostPaths, spec_fd: int = SPEC_FD, bwrap: str = "bwrap"
) -> list[str]:
    """A launcher that joins its cgroups and builds its sandbox now, then waits for a pod.

    Joining a cgroup v1 hierarchy can wait a whole RCU grace period (milliseconds), and
    bubblewrap's namespaces and mounts take several more: a launcher parked ahead of time
    pays both off the pod's start, which then costs the write of its launch spec.
    """
    wrapper = ["/bin/sh", "-c", WRAPPER, "sh", *map(str, procs_files), "--"]
    return [*wrapper, *sandbox_argv(host, spec_fd, bwrap)]


def parked_env(nofile: int) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "NOFILE": str(nofile)}


def _nul_terminated(fields: Sequence[str]) -> bytes:
    return b"".join(field.encode() + b"\0" for field in fields)
