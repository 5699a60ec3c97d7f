"""cgroup v1 groups, one per pod: memory, pids and cpu limits, accounting, and kill-all.

Each pod's groups are nested under the node's own cgroup in every controller, so that the
pod is also held by whatever limits the node itself runs under.
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

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
CFS_PERIOD_US = 100_000


def own_cgroups(proc_file: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """controller -> this process's cgroup path, from /proc/self/cgroup (v1 lines only)."""
    found: dict[str, str] = {}
    for line in proc_file.read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            if name:
                found[name] = path
    return found


def node_base(name: str, root: Path = ROOT) -> dict[str, Path]:
    """Where this node creates pod cgroups: ``<controller>/<own path>/<name>``."""
    own = own_cgroups()
    missing = [c for c in CONTROLLERS if not (root / c / "cgroup.procs").exists()]
    if missing:
        raise RuntimeError(f"cgroup v1 controllers not mounted under {root}: {missing}")
    return {c: root / c / own.get(c, "/").lstrip("/") / name for c in CONTROLLERS}


@dataclass(frozen=True)
class PodCgroup:
    dirs: Mapping[str, Path]

    @classmethod
    def create(
        cls,
        base: Mapping[str, Path],
        name: str,
        *,
        memory_bytes: int | None,
        cpu_millicores: int | None,
        pids: int,
    ) -> PodCgroup:
        group = cls({controller: path / name for controller, path in base.items()})
        for directory in group.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        _write(group.dirs["pids"] / "pids.max", pids)
        if memory_bytes is not None:
            _write(group.dirs["memory"] / "memory.limit_in_bytes", memory_bytes)
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(group.dirs["memory"] / "memory.memsw.limit_in_bytes", memory_bytes)
        if cpu_millicores is not None:
            _write(group.dirs["cpu"] / "cpu.cfs_period_us", CFS_PERIOD_US)
            _write(group.dirs["cpu"] / "cpu.cfs_quota_us", cpu_millicores * CFS_PERIOD_US // 1000)
        return group

    @property
    def procs_files(self) -> list[Path]:
        return [directory / "cgroup.procs" for directory in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> bool:
        """Signal every process until none is left; False if some survived the timeout."""
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if time.monotonic() > deadline:
                log.error("processes %s survived SIGKILL in %s", sorted(pids), self.dirs)
                return False
            time.sleep(0.002)
        return True

    def oom_kills(self) -> int:
        text = _read(self.dirs["memory"] / "memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def memory_peak(self) -> int | None:
        value = _read(self.dirs["memory"] / "memory.max_usage_in_bytes")
        return int(value) if value else None

    def cpu_usage_ns(self) -> int | None:
        value = _read(self.dirs["cpuacct"] / "cpuacct.usage")
        return int(value) if value else None

    def remove(self, attempts: int = 50) -> None:
        for directory in self.dirs.values():
            remove_dir(directory, attempts)


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


def _write(path: Path, value: int) -> None:
    path.write_text(str(value))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
