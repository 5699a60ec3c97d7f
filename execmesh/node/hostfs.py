"""The host side of the sandbox's filesystem: what the node prepares once, and per pod.

Once per node start: one directory that becomes the pod's whole /etc (copies of the few
files libraries need, and a passwd/group naming no host user), so the sandbox binds one
directory instead of a dozen files. Per launcher: its slot directory. Per pod: the ConfigMap
files and the termination-log, staged in the slot of the launcher that takes the pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from execmesh.node.sandbox import (
    STAGED_FILES,
    TERMINATION_LOG,
    HostPaths,
    PodRejected,
    SandboxSpec,
)

# /etc files that the C library and the interpreters read; nothing secret.
ETC_FILES = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "nsswitch.conf",
    "host.conf",
    "hosts",
    "protocols",
    "services",
    "mime.types",
    "timezone",
)
# Of /usr/local only the toolchains are part of the "image"; the rest is this host's.
USR_LOCAL_KEEP = ("go",)
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnonroot:x:65532:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


@dataclass(frozen=True)
class HostLayout:
    etc_dir: Path
    root_links: dict[str, str]
    usr_local_keep: tuple[str, ...]
    podexec: Path


class MissingPodexec(RuntimeError):
    """The node cannot start pods without execmesh-podexec, which `make setup` builds."""


SHM = Path("/dev/shm")


def scratch_root(data_dir: Path, shm: Path = SHM) -> Path:
    """Where pods' scratch files go: a directory of ours on /dev/shm, else data_dir/run.

    Creating a file costs a fraction of a millisecond on a journalled disk and a few
    microseconds on tmpfs, and a pod's start creates several. The directory is the node's
    alone (mode 0700, its own uid); a path someone else made first is refused.
    """
    usable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
    # Staged files are bound into the sandbox with their mount's flags.
    if not usable or os.statvfs(shm).f_flag & os.ST_NOEXEC:
        return data_dir / "run"
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    root = shm / f"execmesh-node-{digest}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{root} is not a private directory of this user: remove it")
    return root


def check_podexec(podexec: Path) -> None:
    if not os.access(podexec, os.X_OK):
        raise MissingPodexec(f"{podexec} is missing or not executable: run `make setup`")


def prepare_host(etc_dir: Path, podexec: Path, host_etc: Path = Path("/etc")) -> HostLayout:
    check_podexec(podexec)
    if etc_dir.exists():
        shutil.rmtree(etc_dir)
    etc_dir.mkdir(parents=True)
    etc_dir.chmod(0o755)
    for name in ETC_FILES:
        source = host_etc / name
        if source.is_symlink():
            os.symlink(os.readlink(source), etc_dir / name)
        elif source.is_dir():
            shutil.copytree(source, etc_dir / name, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, etc_dir / name)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS)):
        (etc_dir / name).write_text(text)
        (etc_dir / name).chmod(0o644)
    links = {}
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            links[f"/{name}"] = os.readlink(path)
    keep = tuple(n for n in USR_LOCAL_KEEP if os.path.isdir(f"/usr/local/{n}"))
    return HostLayout(etc_dir, links, keep, podexec.resolve())


def launcher_paths(
    layout: HostLayout,
    slot_dir: Path,
    cgroup_mounts: dict[str, Path],
    unshare_net: bool = True,
) -> HostPaths:
    """What a parked launcher's sandbox is built from: the host layout and its own slot."""
    slot_dir.mkdir(parents=True, exist_ok=True)
    return HostPaths(
        slot_dir=slot_dir,
        etc_dir=layout.etc_dir,
        cgroup_mounts=cgroup_mounts,
        root_links=layout.root_links,
        usr_local_keep=layout.usr_local_keep,
        podexec=layout.podexec,
        unshare_net=unshare_net,
    )


def stage_pod(spec: SandboxSpec, slot_dir: Path) -> Path:
    """Write the pod's ConfigMap files and an empty termination-log it may write; its path."""
    files_dir = slot_dir / STAGED_FILES
    for file in spec.files:
        target = Path(os.path.normpath(files_dir / file.path.lstrip("/")))
        # Admission allows only absolute mount paths; this write runs as the node's user.
        if target == files_dir or not target.is_relative_to(files_dir):
            raise PodRejected(f"{file.path!r} is no path inside the pod")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.content)
        target.chmod(file.mode & 0o777)
    termination = slot_dir / TERMINATION_LOG
    termination.touch(0o644)
    os.chown(termination, spec.uid, spec.gid)
    return termination
