"""The pod monitor as it runs in production: its own process, emitting to a sink over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_harness import (
    NAMESPACE,
    Node,
    Sink,
    a_request,
    local_config_for,
    needs_sandbox,
    start_node,
    wait_until,
)
from kubernetes.client.exceptions import ApiException

from execmesh.events import TERMINAL_EXECUTION_TYPES, ExecutionCompleted, PodCreated
from execmesh.kube.worker import PodWorker
from execmesh.settings import PROJECT_ROOT

pytestmark = [pytest.mark.node, needs_sandbox]

MONITOR = PROJECT_ROOT / "functions" / "pod_monitor" / "main.py"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from start_node(19903, tmp_path_factory)


@pytest.fixture(scope="module")
def worker(node: Node) -> PodWorker:
    return PodWorker(node.clients())


class MonitorProcess:
    def __init__(self, node: Node, sink: Sink, workdir: Path) -> None:
        config = local_config_for(node, workdir)
        self.env = {
            **os.environ,
            "K_SINK": sink.url,
            "EXECMESH_POD_BACKEND": "local",
            "EXECMESH_POD_NAMESPACE": NAMESPACE,
            "EXECMESH_LOCAL_CONFIG": str(config),
        }
        self.log = workdir / "pod-monitor.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(MONITOR), "--watch-timeout", "2"],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(15)
        self.process = None
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def monitor(node: Node, sink: Sink, tmp_path: Path) -> Iterator[MonitorProcess]:
    process = MonitorProcess(node, sink, tmp_path)
    try:
        yield process
    finally:
        process.stop()


def terminal_ids(sink: Sink, execution_id: str) -> set[str]:
    return {e.id for e in sink.of(execution_id) if e.type in TERMINAL_EXECUTION_TYPES}


def pod_exists(node: Node, name: str) -> bool:
    try:
        node.clients().core.read_namespaced_pod(name, NAMESPACE)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def create(worker: PodWorker, script: str) -> PodCreated:
    created = worker.create(a_request(script))
    assert isinstance(created, PodCreated)
    return created


def test_a_monitor_killed_mid_run_and_restarted_loses_nothing(
    node: Node, worker: PodWorker, sink: Sink, monitor: MonitorProcess
) -> None:
    first = [create(worker, f"import time\ntime.sleep({0.2 * n})\nprint({n})") for n in range(8)]
    monitor.start()
    wait_until(
        lambda: sum(bool(terminal_ids(sink, c.execution_id)) for c in first) >= 2,
        60,
        "two terminal events from the first monitor",
    )
    assert monitor.kill() == -signal.SIGKILL
    # Pods that finish while no monitor runs are reported by the next one.
    second = [create(worker, f"print({n})") for n in range(4)]
    time.sleep(1)
    monitor.start()
    everything = first + second
    wait_until(
        lambda: all(terminal_ids(sink, c.execution_id) for c in everything),
        60,
        "a terminal event for every execution",
    )
    for created in everything:
        # Repeats are allowed, but they are the same event: one id per execution.
        assert len(terminal_ids(sink, created.execution_id)) == 1
        [event, *_] = [
            e for e in sink.of(created.execution_id) if e.type == ExecutionCompleted.TYPE
        ]
        assert event.source == "/execmesh/pod-monitor"
        assert event.subject == created.execution_id
    wait_until(
        lambda: not any(pod_exists(node, c.pod_name) for c in everything),
        40,
        "every reported pod deleted",
    )


def test_pods_are_kept_until_their_events_are_delivered(
    node: Node, worker: PodWorker, sink: Sink, monitor: MonitorProcess
) -> None:
    sink.refuse = True
    monitor.start()
    created = [create(worker, f"print({n})") for n in range(3)]
    time.sleep(3)
    assert all(pod_exists(node, c.pod_name) for c in created)
    assert not any(sink.of(c.execution_id) for c in created)
    sink.refuse = False
    wait_until(
        lambda: all(terminal_ids(sink, c.execution_id) for c in created),
        60,
        "the terminal events once the sink is back",
    )
    wait_until(
        lambda: not any(pod_exists(node, c.pod_name) for c in created),
        40,
        "the pods deleted once reported",
    )


def test_sigterm_stops_the_monitor_promptly_and_cleanly(monitor: MonitorProcess) -> None:
    monitor.start()
    wait_until(lambda: b"watching" in monitor.log.read_bytes(), 20, "the monitor started")
    started = time.monotonic()
    assert monitor.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8  # a watch request waited out would hold it 12 s


def test_the_monitor_refuses_to_start_without_a_sink(node: Node, tmp_path: Path) -> None:
    env = {**os.environ, "EXECMESH_POD_BACKEND": "local"}
    env.pop("K_SINK", None)
    result = subprocess.run(
        [sys.executable, str(MONITOR)], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert b"K_SINK" in result.stderr
