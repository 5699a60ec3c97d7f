from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kube_harness import (
    NAMESPACE,
    Node,
    a_request,
    needs_sandbox,
    start_node,
    unique,
    wait_until,
)
from kubernetes.client.exceptions import ApiException

from execmesh.events import (
    TERMINAL_EXECUTION_TYPES,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionTimedOut,
    FailureType,
    Payload,
    PodCreated,
    PodRunning,
    parse_payload,
)
from execmesh.kube.monitor import PodMonitor
from execmesh.kube.worker import PodWorker
from execmesh.mesh.sender import Emitter, RecordingSender
from execmesh.pods import manifest
from execmesh.results.outputs import InMemoryOutputStore, read_stream

pytestmark = [pytest.mark.node, needs_sandbox]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from start_node(19902, tmp_path_factory)


class Running:
    """A pod monitor running in a thread, recording what it emits."""

    def __init__(self, node: Node) -> None:
        self.sender = RecordingSender()
        self.outputs = InMemoryOutputStore()
        self.monitor = PodMonitor(
            node.clients(),
            Emitter("pod-monitor", self.sender),
            self.outputs,
            watch_timeout_seconds=1,
        )
        self.thread = threading.Thread(target=self.monitor.run, daemon=True)

    def events(self, execution_id: str) -> list[Payload]:
        return [
            parse_payload(event.type, dict(event.data))
            for event in list(self.sender.sent)
            if event.data.get("execution_id") == execution_id
        ]

    def terminal(self, execution_id: str, timeout: float = 60) -> Payload:
        def arrived() -> bool:
            return any(p.TYPE in TERMINAL_EXECUTION_TYPES for p in self.events(execution_id))

        wait_until(arrived, timeout, f"a terminal event for {execution_id}")
        [payload] = [p for p in self.events(execution_id) if p.TYPE in TERMINAL_EXECUTION_TYPES]
        return payload


@pytest.fixture
def monitor(node: Node) -> Iterator[Running]:
    running = Running(node)
    running.thread.start()
    try:
        yield running
    finally:
        running.monitor.close()
        running.thread.join(10)


@pytest.fixture(scope="module")
def worker(node: Node) -> PodWorker:
    return PodWorker(node.clients())


def run(worker: PodWorker, monitor: Running, script: str, **options: Any) -> Payload:
    request = a_request(script, **options)
    assert isinstance(worker.create(request), PodCreated)
    return monitor.terminal(request.execution_id)


def pod_gone(node: Node, name: str) -> bool:
    try:
        node.clients().core.read_namespaced_pod(name, NAMESPACE)
    except ApiException as error:
        return error.status == 404
    return False


def test_a_program_that_exits_zero_is_completed_with_its_output_and_usage(
    node: Node, worker: PodWorker, monitor: Running
) -> None:
    result = run(worker, monitor, "print('hello')")
    assert isinstance(result, ExecutionCompleted)
    assert (result.exit_code, result.stdout.data, result.stderr.data) == (0, "hello\n", "")
    assert result.usage.wall_ms is not None


def test_a_program_that_exits_non_zero_is_completed_with_its_exit_code(
    worker: PodWorker, monitor: Running
) -> None:
    result = run(worker, monitor, "import sys\nsys.stderr.write('bad')\nsys.exit(3)")
    assert isinstance(result, ExecutionCompleted)
    assert (result.exit_code, result.stderr.data) == (3, "bad")


def test_stdin_reaches_the_program(worker: PodWorker, monitor: Running) -> None:
    result = run(worker, monitor, "print(input()[::-1])", stdin="abc\n")
    assert isinstance(result, ExecutionCompleted)
    assert result.stdout.data == "cba\n"


def test_a_program_past_its_timeout_is_timed_out_with_what_it_printed(
    worker: PodWorker, monitor: Running
) -> None:
    script = "import time\nprint('start', flush=True)\ntime.sleep(60)"
    result = run(worker, monitor, script, timeout=1)
    assert isinstance(result, ExecutionTimedOut)
    assert result.timeout_seconds == 1
    assert result.stdout.data == "start\n"


def test_a_program_past_its_memory_limit_is_failed_as_oom_killed(
    worker: PodWorker, monitor: Running
) -> None:
    script = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    result = run(worker, monitor, script, memory_mb=64)
    assert isinstance(result, ExecutionFailed)
    assert result.error_type is FailureType.OOM_KILLED


def test_a_pod_whose_image_the_node_does_not_have_is_failed_as_image(
    node: Node, monitor: Running
) -> None:
    request = a_request("print(1)")
    spec = manifest.ExecutionSpec(
        execution_id=request.execution_id,
        runtime=manifest.Runtime(
            language="python",
            version="0.1",
            image="python:0.1-slim",
            source_file="main.py",
            run_command=("python3", "main.py"),
            version_command=("python3", "--version"),
        ),
        script="print(1)",
    )
    core = node.clients().core
    core.create_namespaced_config_map(NAMESPACE, manifest.build_configmap(spec, NAMESPACE))
    core.create_namespaced_pod(NAMESPACE, manifest.build_pod(spec, NAMESPACE))
    result = monitor.terminal(request.execution_id)
    assert isinstance(result, ExecutionFailed)
    assert result.error_type is FailureType.IMAGE
    assert "python:0.1-slim" in result.message


def test_output_over_the_inline_limit_is_stored_and_referenced(
    worker: PodWorker, monitor: Running
) -> None:
    result = run(worker, monitor, "import sys\nsys.stdout.write('x' * 100_000)")
    assert isinstance(result, ExecutionCompleted)
    assert result.stdout.ref is not None
    assert result.stdout.size == 100_000
    assert read_stream(monitor.outputs, result.stdout) == b"x" * 100_000


def test_output_over_the_cap_is_truncated_and_flagged(worker: PodWorker, monitor: Running) -> None:
    result = run(worker, monitor, "print('y' * 5000)", output_bytes=1000)
    assert isinstance(result, ExecutionCompleted)
    assert (result.stdout.size, result.stdout.truncated) == (1000, True)


def test_a_running_pod_is_announced_once_and_deleted_after_it_is_reported(
    node: Node, worker: PodWorker, monitor: Running
) -> None:
    request = a_request("import time\ntime.sleep(1.5)")
    created = worker.create(request)
    assert isinstance(created, PodCreated)
    monitor.terminal(request.execution_id)
    types = [p.TYPE for p in monitor.events(request.execution_id)]
    assert types == [PodRunning.TYPE, ExecutionCompleted.TYPE]
    wait_until(lambda: pod_gone(node, created.pod_name), 10, "the finished pod deleted")


def test_pods_that_finished_while_no_monitor_ran_are_reported_when_one_starts(
    node: Node, worker: PodWorker
) -> None:
    requests = [a_request(f"print({n})") for n in range(3)]
    for request in requests:
        worker.create(request)
    core = node.clients().core

    def all_finished() -> bool:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=manifest.EXECUTOR_SELECTOR)
        mine = {f"exec-{r.execution_id}" for r in requests}
        phases = [p.status.phase for p in pods.items if p.metadata.name in mine]
        return len(phases) == 3 and set(phases) == {"Succeeded"}

    wait_until(all_finished, 60, "three pods finished")
    running = Running(node)
    running.thread.start()
    try:
        for n, request in enumerate(requests):
            result = running.terminal(request.execution_id)
            assert isinstance(result, ExecutionCompleted)
            assert result.stdout.data == f"{n}\n"
    finally:
        running.monitor.close()


def test_a_too_old_resource_version_makes_the_monitor_relist(node: Node) -> None:
    running = Running(node)
    try:
        running.monitor.relist()
        stale = running.monitor.resource_version
        core = node.clients().core
        # The node keeps 200 watch events of every kind: push the listed version out of them.
        for n in range(210):
            body = {"metadata": {"name": unique(f"filler-{n}")}, "data": {}}
            core.create_namespaced_config_map(NAMESPACE, body)
        running.monitor.resource_version = stale
        running.monitor.watch_once()
        assert running.monitor.resource_version == ""
        running.monitor.relist()
        assert int(running.monitor.resource_version) > int(stale)
    finally:
        running.monitor.close()
