"""cgroup control files, against a fake cgroup filesystem in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from execmesh.node.cgroups import Hierarchy, Limits, PodCgroup, detect, limit_files, own_cgroups

MiB = 1024 * 1024


def test_own_cgroups_reads_v1_controllers_and_the_v2_group(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/a/b\n3:cpu,cpuacct:/c\n1:name=systemd:/\n0::/unified/x\n")
    assert own_cgroups(proc) == {
        "memory": "/a/b",
        "cpu": "/c",
        "cpuacct": "/c",
        "name=systemd": "/",
        "": "/unified/x",
    }


def test_v2_is_chosen_only_when_its_controllers_are_there(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert detect(tmp_path) == "v2"
    (tmp_path / "cgroup.controllers").write_text("")
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    assert detect(tmp_path) == "v1"


def test_no_usable_hierarchy_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        detect(tmp_path)


def test_v1_limits_go_to_each_controller() -> None:
    group = PodCgroup("v1", {c: Path(f"/cg/{c}/pod") for c in ("memory", "pids", "cpu")})
    writes = {str(path): value for path, value in limit_files(group, Limits(64 * MiB, 500, 32))}
    assert writes == {
        "/cg/pids/pod/pids.max": "32",
        "/cg/memory/pod/memory.limit_in_bytes": str(64 * MiB),
        "/cg/memory/pod/memory.memsw.limit_in_bytes": str(64 * MiB),
        "/cg/cpu/pod/cpu.cfs_period_us": "100000",
        "/cg/cpu/pod/cpu.cfs_quota_us": "50000",
    }


def test_v2_limits_go_to_the_single_group_without_swap() -> None:
    group = PodCgroup("v2", {"": Path("/cg/pod")})
    writes = {str(path): value for path, value in limit_files(group, Limits(64 * MiB, 1500, 32))}
    assert writes == {
        "/cg/pod/pids.max": "32",
        "/cg/pod/memory.max": str(64 * MiB),
        "/cg/pod/memory.swap.max": "0",
        "/cg/pod/cpu.max": "150000 100000",
    }


def test_no_memory_or_cpu_limit_writes_only_the_pids_limit() -> None:
    group = PodCgroup("v2", {"": Path("/cg/pod")})
    assert [p.name for p, _ in limit_files(group, Limits(None, None, 64))] == ["pids.max"]


def test_a_v2_hierarchy_delegates_controllers_and_makes_pod_groups(tmp_path: Path) -> None:
    hierarchy = Hierarchy("node", root=tmp_path, version="v2")
    hierarchy.prepare()
    base = hierarchy.base[""]
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    group = hierarchy.create("pod", Limits(32 * MiB, 250, 16))
    assert (base / "pod" / "memory.max").read_text() == str(32 * MiB)
    assert (base / "pod" / "cpu.max").read_text() == "25000 100000"
    assert group.sandbox_mounts() == {"/sys/fs/cgroup": base / "pod"}
    assert group.procs_files == [base / "pod" / "cgroup.procs"]


def test_accounting_is_read_from_either_version(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (v2 / "memory.peak").write_text("123\n")
    (v2 / "cpu.stat").write_text("usage_usec 2000\nuser_usec 1500\n")
    group = PodCgroup("v2", {"": v2})
    assert (group.oom_kills(), group.memory_peak(), group.cpu_usage_ns()) == (1, 123, 2_000_000)

    memory, cpuacct = tmp_path / "memory", tmp_path / "cpuacct"
    memory.mkdir()
    cpuacct.mkdir()
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (memory / "memory.max_usage_in_bytes").write_text("456\n")
    (cpuacct / "cpuacct.usage").write_text("789\n")
    group = PodCgroup("v1", {"memory": memory, "cpuacct": cpuacct})
    assert (group.oom_kills(), group.memory_peak(), group.cpu_usage_ns()) == (2, 456, 789)


def test_a_v1_pod_sees_its_own_memory_pids_and_cpuacct_groups() -> None:
    dirs = {c: Path(f"/cg/{c}/pod") for c in ("memory", "pids", "cpu", "cpuacct")}
    assert PodCgroup("v1", dirs).sandbox_mounts() == {
        "/sys/fs/cgroup/memory": dirs["memory"],
        "/sys/fs/cgroup/pids": dirs["pids"],
        "/sys/fs/cgroup/cpuacct": dirs["cpuacct"],
    }


def test_at_start_every_group_under_the_node_base_is_a_leftover(tmp_path: Path) -> None:
    hierarchy = Hierarchy("node", root=tmp_path, version="v1")
    hierarchy.prepare()
    hierarchy.create("pod-a", Limits(None, None, 8))
    (hierarchy.base["memory"] / "pod-b").mkdir()
    leftovers = hierarchy.leftovers()
    assert sorted(group.dirs["pids"].name for group in leftovers) == ["pod-a", "pod-b"]
    assert all(set(group.dirs) == {"memory", "pids", "cpu", "cpuacct"} for group in leftovers)
