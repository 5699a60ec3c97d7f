"""One cgroup per pod: memory, pids and cpu limits, accounting, and kill-all.

cgroup v2 where the machine has the unified hierarchy with its controllers, v1 otherwise.
Pod groups are nested under the node's own cgroup, so a pod is also held by whatever limits
the node itself runs under. A ``Hierarchy`` makes groups; a ``PodCgroup`` is one pod's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000
Version = Literal["v1", "v2"]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None
    cpu_millicores: int | None
    pids: int


def own_cgroups(proc_file: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """controller -> this process's cgroup path; the v2 group is under the key ``""``."""
    found: dict[str, str] = {}
    for line in proc_file.read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            found[name] = path
    return found


def detect(root: Path = ROOT) -> Version:
    controllers = root / "cgroup.controllers"
    if controllers.exists() and set(V2_CONTROLLERS) <= set(controllers.read_text().split()):
        return "v2"
    missing = [c for c in V1_CONTROLLERS if not (root / c / "cgroup.procs").exists()]
    if missing:
        raise RuntimeError(f"no usable cgroups under {root}: v1 controllers missing {missing}")
    return "v1"


@dataclass(frozen=True)
class PodCgroup:
    version: Version
    dirs: Mapping[str, Path]  # v1: controller -> directory; v2: {"": directory}

    @property
    def procs_files(self) -> list[Path]:
        return [directory / "cgroup.procs" for directory in self.dirs.values()]

    def sandbox_mounts(self) -> dict[str, Path]:
        """Where the pod sees its own group, read-only: path in the sandbox -> host dir."""
        if self.version == "v2":
            return {"/sys/fs/cgroup": self.dirs[""]}
        return {f"/sys/fs/cgroup/{c}": self.dirs[c] for c in ("memory", "pids", "cpuacct")}

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> bool:
        """Signal every process until none is left; False if some survived the timeout."""
        kill_file = self.dirs.get("", Path("/nonexistent")) / "cgroup.kill"
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            if sig == signal.SIGKILL and kill_file.exists():
                kill_file.write_text("1")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if time.monotonic() > deadline:
                log.error("processes %s survived SIGKILL in %s", sorted(pids), self.dirs)
                return False
            time.sleep(0.002)
        return True

    def oom_kills(self) -> int:
        if self.version == "v2":
            return _field(self.dirs[""] / "memory.events", "oom_kill")
        return _field(self.dirs["memory"] / "memory.oom_control", "oom_kill")

    def memory_peak(self) -> int | None:
        if self.version == "v2":
            return _int(self.dirs[""] / "memory.peak")
        return _int(self.dirs["memory"] / "memory.max_usage_in_bytes")

    def cpu_usage_ns(self) -> int | None:
        if self.version == "v2":
            return _field(self.dirs[""] / "cpu.stat", "usage_usec") * 1000
        return _int(self.dirs["cpuacct"] / "cpuacct.usage")

    def remove(self, attempts: int = 50) -> None:
        for directory in self.dirs.values():
            remove_dir(directory, attempts)


class Hierarchy:
    """Where this node makes pod groups: ``<own cgroup>/<name>/<pod uid>``."""

    def __init__(self, name: str, root: Path = ROOT, version: Version | None = None) -> None:
        self.root = root
        self.version = version or detect(root)
        own = own_cgroups()
        if self.version == "v2":
            self.base = {"": root / own.get("", "/").lstrip("/") / name}
        else:
            self.base = {c: root / c / own.get(c, "/").lstrip("/") / name for c in V1_CONTROLLERS}

    def prepare(self) -> None:
        for directory in self.base.values():
            directory.mkdir(parents=True, exist_ok=True)
        if self.version == "v2":
            _delegate_v2(self.base[""])

    def create(self, name: str, limits: Limits) -> PodCgroup:
        if not all(directory.is_dir() for directory in self.base.values()):
            self.prepare()
        group = PodCgroup(self.version, {key: path / name for key, path in self.base.items()})
        for directory in group.dirs.values():
            directory.mkdir(exist_ok=True)
        self.apply(group, limits)
        return group

    def apply(self, group: PodCgroup, limits: Limits) -> None:
        for path, value in limit_files(group, limits):
            try:
                path.write_text(value)
            except OSError:
                if not path.name.startswith(("memory.memsw.", "memory.swap.")):
                    raise  # swap accounting is optional; nothing else is

    def remove(self) -> None:
        """Remove the node's base groups, when no pod group is left in them."""
        for directory in self.base.values():
            with contextlib.suppress(OSError):
                directory.rmdir()

    def leftovers(self) -> list[PodCgroup]:
        """Every pod group under this node's base: at start, all of them are stale."""
        names: set[str] = set()
        for directory in self.base.values():
            if directory.is_dir():
                names.update(child.name for child in directory.iterdir() if child.is_dir())
        return [PodCgroup(self.version, {k: p / n for k, p in self.base.items()}) for n in names]

    def restore(self, dirs: Mapping[str, str]) -> PodCgroup:
        return PodCgroup(self.version, {key: Path(path) for key, path in dirs.items()})


def limit_files(group: PodCgroup, limits: Limits) -> list[tuple[Path, str]]:
    """The control files to write, in order, for the pod's limits."""
    writes: list[tuple[Path, str]] = []
    if group.version == "v2":
        directory = group.dirs[""]
        writes.append((directory / "pids.max", str(limits.pids)))
        if limits.memory_bytes is not None:
            writes.append((directory / "memory.max", str(limits.memory_bytes)))
            writes.append((directory / "memory.swap.max", "0"))
        if limits.cpu_millicores is not None:
            quota = limits.cpu_millicores * CFS_PERIOD_US // 1000
            writes.append((directory / "cpu.max", f"{quota} {CFS_PERIOD_US}"))
        return writes
    writes.append((group.dirs["pids"] / "pids.max", str(limits.pids)))
    if limits.memory_bytes is not None:
        memory = group.dirs["memory"]
        writes.append((memory / "memory.limit_in_bytes", str(limits.memory_bytes)))
        writes.append((memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
    if limits.cpu_millicores is not None:
        cpu = group.dirs["cpu"]
        writes.append((cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US)))
        quota = limits.cpu_millicores * CFS_PERIOD_US // 1000
        writes.append((cpu / "cpu.cfs_quota_us", str(quota)))
    return writes


def _delegate_v2(base: Path) -> None:
    """Enable the controllers for pod groups below ``base``.

    v2 lets a group hand controllers to its children only while it holds no process, so
    the node first moves itself out of its own group into a leaf beside ``base``.
    """
    parent = base.parent
    wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    try:
        (parent / "cgroup.subtree_control").write_text(wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        leaf = parent / "execmesh-node-self"
        leaf.mkdir(exist_ok=True)
        for pid in (parent / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, OSError):
                (leaf / "cgroup.procs").write_text(pid)
        (parent / "cgroup.subtree_control").write_text(wanted)
    (base / "cgroup.subtree_control").write_text(wanted)


def remove_dir(directory: Path, attempts: int = 50) -> None:
    for _ in range(attempts):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    log.error("cgroup %s is still busy; left in place", directory)


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _field(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0
