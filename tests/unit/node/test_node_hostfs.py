from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from execmesh.node.hostfs import scratch_root, stage_pod
from execmesh.node.sandbox import FileMount, NodeLimits, PodRejected, sandbox_spec


def test_pod_scratch_goes_to_a_private_directory_on_shm(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    root = scratch_root(tmp_path / "data", shm)
    assert root.parent == shm and root.name.startswith("execmesh-node-")
    assert root.stat().st_mode & 0o777 == 0o700
    assert scratch_root(tmp_path / "data", shm) == root  # the same node, the same place
    assert scratch_root(tmp_path / "other", shm) != root


def test_a_directory_someone_else_could_use_is_refused(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    root = scratch_root(tmp_path / "data", shm)
    root.chmod(0o777)
    with pytest.raises(RuntimeError, match="not a private directory"):
        scratch_root(tmp_path / "data", shm)
    root.rmdir()
    os.symlink(tmp_path, root)
    with pytest.raises(RuntimeError, match="not a private directory"):
        scratch_root(tmp_path / "data", shm)


def test_without_shm_scratch_stays_in_the_data_dir(tmp_path: Path) -> None:
    assert scratch_root(tmp_path / "data", tmp_path / "none") == tmp_path / "data" / "run"


def test_staged_files_land_inside_the_slot_only(tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{"name": "c", "image": "i", "command": ["true"]}]},
    }
    spec = replace(sandbox_spec(pod, {}, NodeLimits()), uid=os.getuid(), gid=os.getgid())
    slot = tmp_path / "slot"
    stage_pod(replace(spec, files=(FileMount("/etc/app/conf", b"x", 0o640),)), slot)
    assert (slot / "files" / "etc" / "app" / "conf").read_bytes() == b"x"
    # Admission refuses these; staging, which writes as the node's user, refuses them too.
    for path in ("../../outside", "/../..//x/../../../outside", "/"):
        with pytest.raises(PodRejected):
            stage_pod(replace(spec, files=(FileMount(path, b"x", 0o755),)), slot)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slot"]
