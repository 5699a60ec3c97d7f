"""functions/saga/main.py through the function contract, with the in-memory store and fakes."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType

import httpx
import pytest
from starlette.testclient import TestClient

from execmesh.errors import TransientError
from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionSpec,
    Limits,
    Payload,
    PingTick,
    PodCreated,
    PodDeleted,
    PodRunning,
    Priority,
)
from execmesh.mesh import (
    InMemoryIdempotencyStore,
    RecordingSender,
    Runtime,
    asgi_app,
    cloud_event_function,
)
from execmesh.saga.engine import SagaConfig, SagaService
from execmesh.saga.machine import Phase, Policy, Saga
from execmesh.saga.store import InMemorySagaStore
from execmesh.settings import PROJECT_ROOT, Settings

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
POLICY = Policy(
    grace=timedelta(seconds=30), retention=timedelta(hours=1), startup=timedelta(minutes=5)
)
LIMITS = Limits(timeout_seconds=10, memory_mb=128, cpu_millis=500, output_bytes=65536)
PING_SOURCE = "/apis/v1/namespaces/execmesh/pingsources/execmesh-tick"


def load_main() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "saga_main", PROJECT_ROOT / "functions" / "saga" / "main.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accepted(execution_id: str) -> ExecutionAccepted:
    return ExecutionAccepted(
        execution_id=execution_id,
        user_id="alice",
        spec=ExecutionSpec(language="python", version="3.11", script="print(1)"),
        limits=LIMITS,
        priority=Priority.NORMAL,
        lease_expires_at=T0 + timedelta(minutes=1),
    )


class FlakyStore(InMemorySagaStore):
    """Fails every save while ``down``: MongoDB unreachable. Counts its reads."""

    down = False
    reads = 0

    def get(self, execution_id: str) -> Saga | None:
        self.reads += 1
        return super().get(execution_id)

    def save(self, saga: Saga) -> Saga:
        if self.down:
            raise TransientError("mongodb is down")
        return super().save(saga)


@dataclass
class Harness:
    store: FlakyStore = field(default_factory=FlakyStore)
    sender: RecordingSender = field(default_factory=RecordingSender)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A new process: same store and sink, no idempotency markers."""
        service = SagaService(self.store, SagaConfig(POLICY, batch_size=10), clock=lambda: T0)
        runtime = Runtime(Settings(), service, InMemoryIdempotencyStore(), self.sender)
        view = cloud_event_function("saga", load_main().on_event, runtime=runtime)
        self.client: TestClient = TestClient(asgi_app(view))

    def post(
        self, payload: Payload, event_id: str, at: datetime = T0, source: str = "/test"
    ) -> httpx.Response:
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": source,
            "ce-type": payload.TYPE,
            "ce-time": at.isoformat(),
        }
        return self.client.post("/", headers=headers, content=json.dumps(payload.to_data()))

    def take(self) -> list[tuple[str, str]]:
        sent = [
            (e.type.removeprefix("io.execmesh."), str(e.data["execution_id"]))
            for e in self.sender.sent
        ]
        self.sender.sent.clear()
        return sent


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_an_acceptance_asks_for_the_pod_and_answers_202_with_no_body(harness: Harness) -> None:
    response = harness.post(accepted("e1"), "a1")
    assert (response.status_code, response.content) == (202, b"")
    (sent,) = harness.sender.sent
    assert sent.type == "io.execmesh.pod.create_requested"
    assert (sent.subject, sent.extensions["partitionkey"]) == ("e1", "e1")
    assert sent.data["limits"] == LIMITS.model_dump(mode="json")
    saga = harness.store.get("e1")
    assert saga is not None and saga.deadline == T0 + timedelta(minutes=5)


def test_a_run_cancelled_while_running_deletes_the_pod_then_reports_cancelled(
    harness: Harness,
) -> None:
    harness.post(accepted("e1"), "a1")
    harness.post(PodCreated(execution_id="e1", namespace="execmesh", pod_name="p"), "c1")
    harness.post(PodRunning(execution_id="e1", pod_name="p"), "r1")
    harness.take()
    harness.post(ExecutionCancelRequested(execution_id="e1", reason="stop"), "x1")
    assert harness.take() == [("pod.delete_requested", "e1")]
    harness.post(PodDeleted(execution_id="e1", namespace="execmesh", pod_name="p"), "d1")
    assert harness.take() == [("execution.cancelled", "e1"), ("saga.compensated", "e1")]


def test_a_cancel_before_the_acceptance_means_no_pod_is_ever_asked_for(harness: Harness) -> None:
    harness.post(ExecutionCancelRequested(execution_id="e1"), "x1")
    harness.post(accepted("e1"), "a1")
    assert harness.take() == [("execution.cancelled", "e1"), ("saga.compensated", "e1")]


def test_the_ping_times_out_every_saga_past_its_deadline(harness: Harness) -> None:
    for name, start in (("e1", T0), ("e2", T0), ("e3", T0 + timedelta(minutes=5))):
        harness.post(accepted(name), f"a-{name}", at=start)
        harness.post(PodRunning(execution_id=name, pod_name="p"), f"r-{name}", at=start)
    harness.take()
    tick = T0 + timedelta(seconds=41)
    assert harness.post(PingTick(), "tick-1", at=tick, source=PING_SOURCE).status_code == 202
    sent = list(harness.sender.sent)
    assert sorted(harness.take()) == sorted(
        (kind, name)
        for name in ("e1", "e2")
        for kind in ("execution.timed_out", "pod.delete_requested", "saga.compensated")
    )
    assert len({event.id for event in sent}) == 6


def test_a_redelivery_after_a_crash_re_sends_the_same_events(harness: Harness) -> None:
    harness.post(accepted("e1"), "a1")
    tick = T0 + timedelta(minutes=6)
    harness.post(PingTick(), "tick-1", at=tick, source=PING_SOURCE)
    first = list(harness.sender.sent)
    harness.sender.sent.clear()
    harness.restart()  # the markers are gone: both events are handled again
    harness.post(accepted("e1"), "a1")
    harness.post(PingTick(), "tick-1", at=tick, source=PING_SOURCE)
    assert [(e.id, e.type, dict(e.data)) for e in harness.sender.sent] == [
        (e.id, e.type, dict(e.data)) for e in first
    ]
    assert [e.type.removeprefix("io.execmesh.") for e in first[1:]] == [
        "execution.failed",
        "pod.delete_requested",
        "saga.compensated",
    ]


def test_a_pod_that_started_late_gets_its_whole_timeout_from_its_own_start_time(
    harness: Harness,
) -> None:
    harness.post(accepted("e1"), "a1")
    started = T0 + timedelta(seconds=199)
    running = PodRunning(execution_id="e1", pod_name="p", started_at=started)
    harness.post(running, "r1", at=T0 + timedelta(seconds=200))
    harness.take()
    harness.post(PingTick(), "tick-1", at=started + timedelta(seconds=39), source=PING_SOURCE)
    assert harness.take() == []
    harness.post(PingTick(), "tick-2", at=started + timedelta(seconds=40), source=PING_SOURCE)
    assert harness.take() == [
        ("execution.timed_out", "e1"),
        ("pod.delete_requested", "e1"),
        ("saga.compensated", "e1"),
    ]


def test_a_duplicate_delivery_is_answered_without_a_second_emission(harness: Harness) -> None:
    harness.post(accepted("e1"), "a1")
    assert harness.post(accepted("e1"), "a1").status_code == 202
    assert len(harness.sender.sent) == 1


def test_a_completion_before_pod_running_ends_the_saga_and_pod_running_changes_nothing(
    harness: Harness,
) -> None:
    harness.post(accepted("e1"), "a1")
    harness.post(ExecutionCompleted(execution_id="e1", exit_code=0), "t1")
    harness.post(PodRunning(execution_id="e1", pod_name="p"), "r1")
    assert harness.take() == [("pod.create_requested", "e1"), ("saga.completed", "e1")]
    saga = harness.store.get("e1")
    assert saga is not None and saga.phase is Phase.FINISHED


def test_mongodb_down_is_a_503_and_the_retry_succeeds(harness: Harness) -> None:
    harness.store.down = True
    assert harness.post(accepted("e1"), "a1").status_code == 503
    assert harness.sender.sent == []
    harness.store.down = False
    assert harness.post(accepted("e1"), "a1").status_code == 202
    assert harness.take() == [("pod.create_requested", "e1")]


def test_an_event_the_saga_does_not_handle_is_refused_with_400(harness: Harness) -> None:
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "q1",
        "ce-source": "/test",
        "ce-type": "io.execmesh.replay.session",
    }
    data = {"session_id": "s", "phase": "started"}
    response = harness.client.post("/", headers=headers, content=json.dumps(data))
    assert response.status_code == 400


def test_health_endpoints_answer_200(harness: Harness) -> None:
    assert harness.client.get("/health/liveness").status_code == 200
    assert harness.client.get("/health/readiness").status_code == 200


def test_an_acceptance_starts_its_saga_unread_and_a_redelivery_reads_it(harness: Harness) -> None:
    harness.post(accepted("e1"), "a1")
    first = harness.take()
    assert harness.store.reads == 0

    harness.restart()  # no idempotency markers: the acceptance is handled again
    assert harness.post(accepted("e1"), "a1").status_code == 202
    assert harness.store.reads == 1
    assert harness.take() == first == [("pod.create_requested", "e1")]
    saga = harness.store.get("e1")
    assert saga is not None and saga.version == 1
