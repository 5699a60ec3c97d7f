"""The node's Kubernetes API semantics, through the official client: errors, selectors,
watch resume and expiry, deletion, image pulls and node restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from node_harness import (
    NAMESPACE,
    Node,
    host_processes_with,
    needs_sandbox,
    run_pod,
    shell_pod,
    terminated,
    unique,
    wait_terminal,
    with_config,
)

from execmesh.node.hostfs import scratch_root
from execmesh.node.kubelet import PARKED_LAUNCHERS

pytestmark = [pytest.mark.node, needs_sandbox]


def status_of(call: object) -> tuple[int, str]:
    assert isinstance(call, ApiException)
    body = json.loads(call.body)
    assert body["kind"] == "Status"
    return call.status, body["reason"]


def test_duplicate_names_are_409_and_missing_objects_are_404(core: client.CoreV1Api) -> None:
    name = unique("dup")
    configmap = {"metadata": {"name": name}, "data": {"k": "v"}}
    core.create_namespaced_config_map(NAMESPACE, configmap)
    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_config_map(NAMESPACE, configmap)
    assert status_of(duplicate.value) == (409, "AlreadyExists")
    assert core.read_namespaced_config_map(name, NAMESPACE).data == {"k": "v"}

    run_pod(core, shell_pod(name, "true"))
    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_pod(NAMESPACE, shell_pod(name, "true"))
    assert status_of(duplicate.value) == (409, "AlreadyExists")

    core.delete_namespaced_config_map(name, NAMESPACE)
    core.delete_namespaced_pod(name, NAMESPACE)
    for call in (
        lambda: core.read_namespaced_config_map(name, NAMESPACE),
        lambda: core.delete_namespaced_config_map(name, NAMESPACE),
        lambda: core.read_namespaced_pod(name, NAMESPACE),
        lambda: core.delete_namespaced_pod(name, NAMESPACE),
        lambda: core.read_namespaced_pod_log(name, NAMESPACE),
    ):
        with pytest.raises(ApiException) as missing:
            call()
        assert status_of(missing.value) == (404, "NotFound")


def test_the_log_is_the_raw_bytes_the_container_wrote(core: client.CoreV1Api) -> None:
    name = unique("bytes")
    _, log = run_pod(
        core, shell_pod(name, "printf 'a\\377\\376\\000b\\n'; printf 'two\\nthree' >&2")
    )
    assert log == b"a\xff\xfe\x00b\ntwo\nthree"
    tail = core.read_namespaced_pod_log(name, NAMESPACE, tail_lines=1, _preload_content=False)
    assert tail.data == b"three"
    head = core.read_namespaced_pod_log(name, NAMESPACE, limit_bytes=2, _preload_content=False)
    assert head.data == b"a\xff"


def test_a_followed_log_streams_until_the_container_ends(core: client.CoreV1Api) -> None:
    name = unique("follow")
    core.create_namespaced_pod(
        NAMESPACE, shell_pod(name, "for i in 1 2 3; do echo $i; sleep 0.3; done")
    )
    deadline = time.monotonic() + 10
    while core.read_namespaced_pod(name, NAMESPACE).status.phase == "Pending":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stream = core.read_namespaced_pod_log(name, NAMESPACE, follow=True, _preload_content=False)
    assert b"".join(stream.stream(16)) == b"1\n2\n3\n"


def test_list_honours_equality_set_and_existence_label_selectors(core: client.CoreV1Api) -> None:
    run = uuid.uuid4().hex[:8]
    labels = {
        "a": {"run": run, "tier": "x", "env": "dev"},
        "b": {"run": run, "tier": "y", "env": "prod"},
        "c": {"run": run, "tier": "z"},
    }
    for key, pod_labels in labels.items():
        core.create_namespaced_pod(
            NAMESPACE, shell_pod(f"sel-{run}-{key}", "true", labels=pod_labels)
        )

    def names(selector: str) -> list[str]:
        found = core.list_namespaced_pod(NAMESPACE, label_selector=f"run={run},{selector}")
        return sorted(p.metadata.name.rsplit("-", 1)[1] for p in found.items)

    assert names("tier=x") == ["a"]
    assert names("tier!=x") == ["b", "c"]
    assert names("tier in (x,y)") == ["a", "b"]
    assert names("tier notin (x,y)") == ["c"]
    assert names("env") == ["a", "b"]
    assert names("!env") == ["c"]
    assert names("tier in (x, z),env!=prod") == ["a", "c"]  # != also matches a missing key
    every = core.list_pod_for_all_namespaces(label_selector=f"run={run}")
    assert len(every.items) == 3
    for key in labels:
        wait_terminal(core, f"sel-{run}-{key}")


def test_a_watch_resumes_after_a_reconnect_without_gaps_or_repeats(
    core: client.CoreV1Api,
) -> None:
    run = uuid.uuid4().hex[:8]
    selector = f"run={run}"
    start = core.list_namespaced_pod(NAMESPACE, label_selector=selector).metadata.resource_version
    first = f"first-{run}"
    run_pod(core, shell_pod(first, "echo 1", labels={"run": run}))

    seen: list[tuple[str, str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_pod,
        NAMESPACE,
        label_selector=selector,
        resource_version=start,
        timeout_seconds=10,
    ):
        pod = event["object"]
        seen.append((event["type"], pod.metadata.name, pod.status.phase))
        if pod.status.phase == "Succeeded":
            stream.stop()
    last = stream.resource_version
    assert seen[0][:2] == ("ADDED", first) and seen[-1][2] == "Succeeded"

    second = f"second-{run}"
    run_pod(core, shell_pod(second, "echo 2", labels={"run": run}))
    core.delete_namespaced_pod(first, NAMESPACE)

    resumed: list[tuple[str, str, str]] = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod,
        NAMESPACE,
        label_selector=selector,
        resource_version=last,
        timeout_seconds=2,
    ):
        pod = event["object"]
        resumed.append((event["type"], pod.metadata.name, pod.status.phase))
    assert resumed[0] == ("ADDED", second, "Pending")
    assert ("MODIFIED", second, "Succeeded") in resumed
    assert resumed[-1][:2] == ("DELETED", first)
    assert not any(name == first and kind != "DELETED" for kind, name, _ in resumed)


@pytest.fixture
def short_history_node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path / "data", extra_args=("--watch-history", "4"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_a_watch_from_a_version_older_than_the_history_gets_410_expired(
    short_history_node: Node,
) -> None:
    core = short_history_node.core()
    for index in range(6):
        core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": f"cm-{index}"}})
    with pytest.raises(ApiException) as gone:
        list(
            watch.Watch().stream(
                core.list_namespaced_config_map, NAMESPACE, resource_version="1", timeout_seconds=2
            )
        )
    assert gone.value.status == 410
    assert "Expired" in str(gone.value.reason)

    listed = core.list_namespaced_config_map(NAMESPACE)
    assert len(listed.items) == 6
    core.delete_namespaced_config_map("cm-0", NAMESPACE)
    events = list(
        watch.Watch().stream(
            core.list_namespaced_config_map,
            NAMESPACE,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("DELETED", "cm-0")]


def test_an_image_that_is_not_installed_waits_in_err_image_pull(core: client.CoreV1Api) -> None:
    name = unique("pull")
    core.create_namespaced_pod(NAMESPACE, shell_pod(name, "true", image="cobol:1.0"))
    reasons = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "ImagePullBackOff" not in reasons:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        waiting = pod.status.container_statuses[0].state.waiting
        if waiting is not None:
            reasons.add(waiting.reason)
        time.sleep(0.1)
    assert pod.status.phase == "Pending"
    assert {"ErrImagePull", "ImagePullBackOff"} <= reasons
    assert "cobol:1.0" in pod.status.container_statuses[0].state.waiting.message
    core.delete_namespaced_pod(name, NAMESPACE)


def test_a_pod_waits_for_its_configmap_then_runs(core: client.CoreV1Api) -> None:
    name = unique("late")
    body = with_config(
        shell_pod(name, "cat /config/greeting"), name, {"mountPath": "/config", "readOnly": True}
    )
    core.create_namespaced_pod(NAMESPACE, body)
    time.sleep(0.5)
    waiting = core.read_namespaced_pod(name, NAMESPACE).status.container_statuses[0].state.waiting
    assert waiting.reason == "ContainerCreating"
    core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": name}, "data": {"greeting": "hi"}}
    )
    pod = wait_terminal(core, name)
    assert pod.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log(name, NAMESPACE) == "hi"


def test_a_configmap_key_mounted_with_sub_path_covers_a_file_of_the_image(
    core: client.CoreV1Api,
) -> None:
    name = unique("over")
    core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": name}, "data": {"hosts": "10.0.0.1 db\n"}}
    )
    script = "cat /etc/hosts; cat /etc/passwd | wc -l"
    body = with_config(
        shell_pod(name, script), name, {"mountPath": "/etc/hosts", "subPath": "hosts"}
    )
    pod, log = run_pod(core, body)
    assert (pod.status.phase, log) == ("Succeeded", b"10.0.0.1 db\n3\n")


def test_values_reach_the_program_as_they_are_and_large_volumes_mount(
    core: client.CoreV1Api,
) -> None:
    """podexec reads a fixed number of fields per option: "--" is a value like any other."""
    body = shell_pod(
        unique("values"), 'echo "$DASHES"; df -k /big | tail -n 1', env={"DASHES": "--"}
    )
    body["spec"]["volumes"].append({"name": "big", "emptyDir": {"sizeLimit": "5Gi"}})
    body["spec"]["containers"][0]["volumeMounts"].append({"name": "big", "mountPath": "/big"})
    pod, log = run_pod(core, body)
    assert pod.status.phase == "Succeeded", log
    dashes, usage = log.decode().splitlines()
    assert dashes == "--"
    assert int(usage.split()[1]) == 5 * 1024 * 1024  # 1K blocks


def test_deleting_a_running_pod_kills_it_and_removes_the_object(core: client.CoreV1Api) -> None:
    name, marker = unique("victim"), uuid.uuid4().hex
    body = shell_pod(name, "trap '' TERM; sleep 600 & wait", env={"MARK": marker})
    created = core.create_namespaced_pod(NAMESPACE, body)
    deadline = time.monotonic() + 10
    while core.read_namespaced_pod(name, NAMESPACE).status.phase != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deleted = core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=1)
    assert deleted.metadata.deletion_timestamp is not None
    types = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod,
        NAMESPACE,
        field_selector=f"metadata.name={name}",
        resource_version=created.metadata.resource_version,
        timeout_seconds=30,
    ):
        types.append(event["type"])
        if event["type"] == "DELETED":
            break
    assert types[-1] == "DELETED"
    assert host_processes_with(marker) == []


def test_many_pods_run_at_once_and_all_finish(core: client.CoreV1Api) -> None:
    run = uuid.uuid4().hex[:8]
    names = [f"many-{run}-{index}" for index in range(12)]
    for index, name in enumerate(names):
        body = shell_pod(name, f"sleep 3; echo {index}", labels={"run": run})
        core.create_namespaced_pod(NAMESPACE, body)
    deadline = time.monotonic() + 15
    while True:
        running = core.list_namespaced_pod(
            NAMESPACE, label_selector=f"run={run}", field_selector="status.phase=Running"
        )
        if len(running.items) >= 4:
            break
        assert time.monotonic() < deadline, f"{len(running.items)} pods running at once"
        time.sleep(0.05)
    for index, name in enumerate(names):
        assert wait_terminal(core, name).status.phase == "Succeeded"
        assert core.read_namespaced_pod_log(name, NAMESPACE) == f"{index}\n"


def test_pods_deleted_as_soon_as_they_finish_leave_nothing_behind(
    node: Node, core: client.CoreV1Api
) -> None:
    assert node.process is not None
    descriptors = Path(f"/proc/{node.process.pid}/fd")

    def churn(count: int) -> None:
        for _ in range(count):
            name = unique("churn")
            run_pod(core, shell_pod(name, "echo x"))
            core.delete_namespaced_pod(name, NAMESPACE)

    churn(3)
    time.sleep(0.5)
    before = len(list(descriptors.iterdir()))
    churn(15)
    # The terminal status comes before the clean-up, which runs in a thread.
    deadline = time.monotonic() + 10
    # What stays is the parked launchers' slots, each waiting for a pod of its own.
    while len(list(descriptors.iterdir())) > before + 2 or (
        len(list(scratch_root(node.data_dir).iterdir())) > PARKED_LAUNCHERS
    ):
        assert time.monotonic() < deadline, "descriptors or scratch files left behind"
        time.sleep(0.1)
    assert not [p for p in (node.data_dir / "logs").iterdir() if "churn" in p.name]


def test_a_pod_whose_files_cannot_be_placed_fails_and_frees_its_launcher(
    node: Node, core: client.CoreV1Api
) -> None:
    assert node.process is not None
    descriptors = Path(f"/proc/{node.process.pid}/fd")
    name = unique("nested")
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name}, "data": {"k": "v"}})
    run_pod(core, shell_pod(unique("warm"), "true"))
    time.sleep(0.5)
    before = len(list(descriptors.iterdir()))
    # A file mounted at /cfg/x, then a volume under /cfg/x: no runtime can place both.
    body = with_config(
        shell_pod(name, "true"),
        name,
        {"mountPath": "/cfg/x", "subPath": "k"},
        {"mountPath": "/cfg/x/y"},
    )
    for _ in range(3):
        body["metadata"]["name"] = unique("nested")
        pod, _ = run_pod(core, body)
        assert (pod.status.phase, pod.status.reason) == ("Failed", "NodeError")
        assert terminated(pod).reason == "StartError"
    deadline = time.monotonic() + 10
    while len(list(descriptors.iterdir())) > before or (
        len(list(scratch_root(node.data_dir).iterdir())) > PARKED_LAUNCHERS
    ):
        assert time.monotonic() < deadline, "a launcher of a pod that never started is left"
        time.sleep(0.1)


def test_a_second_node_on_the_same_data_dir_refuses_to_start(node: Node) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "execmesh.node.main", "--data-dir", str(node.data_dir)],
        capture_output=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert b"another node is using" in second.stderr


@pytest.fixture
def restartable_node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path / "data")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_pod_running_when_the_node_goes_down_is_failed_after_restart_and_cleaned_up(
    restartable_node: Node, how: int
) -> None:
    core = restartable_node.core()
    name, marker = unique("orphan"), uuid.uuid4().hex
    core.create_namespaced_pod(NAMESPACE, shell_pod(name, "sleep 600", env={"MARK": marker}))
    done = unique("done")
    run_pod(core, shell_pod(done, "echo kept"))
    deadline = time.monotonic() + 10
    while core.read_namespaced_pod(name, NAMESPACE).status.phase != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert host_processes_with(marker)
    scratch = scratch_root(restartable_node.data_dir)
    # The running pod's slot and the parked launchers' (the finished pod's goes at clean-up).
    while len(before := set(scratch.iterdir())) != 1 + PARKED_LAUNCHERS:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    restartable_node.stop(how)
    deadline = time.monotonic() + 5
    while host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_with(marker) == []

    restartable_node.start()
    core = restartable_node.core()
    pod = core.read_namespaced_pod(name, NAMESPACE)
    assert pod.status.phase == "Failed"
    assert pod.status.reason == ("NodeLost" if how == signal.SIGKILL else "Terminated")
    assert terminated(pod).exit_code == 137
    kept = core.read_namespaced_pod(done, NAMESPACE)
    assert kept.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log(done, NAMESPACE) == "kept\n"
    after = set(scratch.iterdir())  # the new node's parked launchers'
    assert not before & after and len(after) <= PARKED_LAUNCHERS
