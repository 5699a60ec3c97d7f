"""functions/result_processor/main.py through the function contract, with in-memory fakes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from starlette.testclient import TestClient

from execmesh.errors import TransientError
from execmesh.events import (
    ExecutionAccepted,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionRejected,
    ExecutionRequested,
    ExecutionSpec,
    FailureType,
    Limits,
    Payload,
    PodRunning,
    Priority,
    StreamOutput,
)
from execmesh.mesh import (
    InMemoryIdempotencyStore,
    RecordingSender,
    Runtime,
    asgi_app,
    cloud_event_function,
)
from execmesh.results.processor import ResultProcessor
from execmesh.results.record import ExecutionDocument, ExecutionStatus
from execmesh.results.store import InMemoryExecutionStore
from execmesh.settings import Settings
from tests.support.cloudevents import binary_headers
from tests.support.functions import load_function

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
SPEC = ExecutionSpec(language="bash", version="5", script="echo hi")
LIMITS = Limits(timeout_seconds=10, memory_mb=128, cpu_millis=500, output_bytes=65536)


class FlakyStore(InMemoryExecutionStore):
    down = False
    reads = 0

    def get(self, execution_id: str) -> ExecutionDocument | None:
        self.reads += 1
        return super().get(execution_id)

    def save(self, document: ExecutionDocument) -> ExecutionDocument:
        if self.down:
            raise TransientError("mongodb is down")
        return super().save(document)


@dataclass
class Harness:
    store: FlakyStore = field(default_factory=FlakyStore)
    sender: RecordingSender = field(default_factory=RecordingSender)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        processor = ResultProcessor(self.store, clock=lambda: T0)
        runtime = Runtime(Settings(), processor, InMemoryIdempotencyStore(), self.sender)
        view = cloud_event_function(
            "result-processor", load_function("result_processor").on_event, runtime=runtime
        )
        self.client: TestClient = TestClient(asgi_app(view))

    def post(self, payload: Payload, event_id: str) -> httpx.Response:
        headers = binary_headers(payload.TYPE, event_id, "/test")
        return self.client.post("/", headers=headers, content=json.dumps(payload.to_data()))

    def take(self) -> list[tuple[str, str]]:
        sent = [
            (e.type.removeprefix("io.execmesh."), str(e.data.get("status", "")))
            for e in self.sender.sent
        ]
        self.sender.sent.clear()
        return sent


@pytest.fixture
def harness() -> Harness:
    return Harness()


def run_to_the_end(harness: Harness, execution_id: str = "e1") -> None:
    harness.post(
        ExecutionRequested(execution_id=execution_id, user_id="u", spec=SPEC, submitted_at=T0), "q"
    )
    harness.post(
        ExecutionQueued(execution_id=execution_id, user_id="u", priority=Priority.LOW, position=2),
        "w",
    )
    accepted = ExecutionAccepted(
        execution_id=execution_id,
        user_id="u",
        spec=SPEC,
        limits=LIMITS,
        priority=Priority.LOW,
        lease_expires_at=T0,
    )
    harness.post(accepted, "a")
    harness.post(PodRunning(execution_id=execution_id, pod_name="p"), "r")


def test_lifecycle_events_only_move_the_status_and_emit_nothing(harness: Harness) -> None:
    run_to_the_end(harness)
    assert harness.sender.sent == []
    document = harness.store.get("e1")
    assert document is not None and document.status is ExecutionStatus.RUNNING


def test_the_result_is_stored_then_announced_then_cleanup_asked(
    harness: Harness,
) -> None:
    run_to_the_end(harness)
    stdout = StreamOutput(size=1 << 20, ref="e1/stdout")
    response = harness.post(ExecutionCompleted(execution_id="e1", exit_code=7, stdout=stdout), "t1")
    assert (response.status_code, response.content) == (202, b"")
    assert harness.take() == [("result.stored", "completed"), ("pod.delete_requested", "")]
    document = harness.store.get("e1")
    assert document is not None and document.result is not None
    assert (document.result.exit_code, document.result.stdout) == (7, stdout)


def test_a_second_terminal_event_is_recorded_late_and_announces_nothing(harness: Harness) -> None:
    harness.post(ExecutionCompleted(execution_id="e1", exit_code=0), "t1")
    harness.take()
    failed = ExecutionFailed(execution_id="e1", error_type=FailureType.EVICTED, message="evicted")
    assert harness.post(failed, "t2").status_code == 202
    assert harness.take() == []
    document = harness.store.get("e1")
    assert document is not None and document.status is ExecutionStatus.COMPLETED
    assert [late.event_id for late in document.late_results] == ["t2"]


def test_a_rejection_needs_no_pod_cleanup(harness: Harness) -> None:
    rejected = ExecutionRejected(execution_id="e1", user_id="u", code="size", reason="too big")
    harness.post(rejected, "j1")
    assert harness.take() == [("result.stored", "rejected")]


def test_a_redelivery_after_a_crash_re_sends_the_same_events(harness: Harness) -> None:
    harness.post(ExecutionCompleted(execution_id="e1", exit_code=0), "t1")
    first = [(e.id, e.type) for e in harness.sender.sent]
    harness.sender.sent.clear()
    harness.restart()
    harness.post(ExecutionCompleted(execution_id="e1", exit_code=0), "t1")
    assert [(e.id, e.type) for e in harness.sender.sent] == first


def test_mongodb_down_is_a_503_and_the_retry_succeeds(harness: Harness) -> None:
    harness.store.down = True
    assert harness.post(ExecutionCompleted(execution_id="e1", exit_code=0), "t1").status_code == 503
    assert harness.sender.sent == []
    harness.store.down = False
    assert harness.post(ExecutionCompleted(execution_id="e1", exit_code=0), "t1").status_code == 202
    assert harness.take() == [("result.stored", "completed"), ("pod.delete_requested", "")]


def test_a_malformed_event_is_refused_with_400(harness: Harness) -> None:
    headers = binary_headers(ExecutionCompleted.TYPE, "m1", "/test")
    response = harness.client.post("/", headers=headers, content=json.dumps({"exit_code": 0}))
    assert response.status_code == 400
    assert harness.store.documents == {}


def test_a_request_starts_its_document_unread_unless_it_comes_late(harness: Harness) -> None:
    requested = ExecutionRequested(execution_id="e1", user_id="u", spec=SPEC, submitted_at=T0)
    harness.post(requested, "q")
    assert harness.store.reads == 0

    running = PodRunning(execution_id="e2", pod_name="p")
    harness.post(running, "r")
    late = ExecutionRequested(execution_id="e2", user_id="u", spec=SPEC, submitted_at=T0)
    assert harness.post(late, "q2").status_code == 202
    document = harness.store.get("e2")
    assert document is not None and document.status is ExecutionStatus.RUNNING
    assert document.user_id == "u" and document.version == 2
