"""The coordinator function through the contract: CloudEvents in, admission events out.

Each test runs against the in-memory store and against the real Redis store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from coordinator_harness import LEASE_SECONDS, START, Harness, requested

from execmesh.admission import AdmissionStore, Capacity, InMemoryAdmissionStore, RedisAdmissionStore
from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionQueued,
    ExecutionRejected,
    ExecutionTimedOut,
    Limits,
    PingTick,
    Priority,
)
from execmesh.mesh import derive_event_id
from tests.support.redis_keys import redis_client

MakeHarness = Callable[..., Harness]
SMALL = Capacity(max_per_user=2, max_global=3)


def memory_stores(prefix: str) -> Iterator[Callable[[Capacity], AdmissionStore]]:
    yield InMemoryAdmissionStore


def redis_stores(prefix: str) -> Iterator[Callable[[Capacity], AdmissionStore]]:
    with redis_client(prefix) as client:
        yield lambda capacity: RedisAdmissionStore(client, capacity, prefix=prefix)


@pytest.fixture(
    params=[
        pytest.param(memory_stores, id="memory"),
        pytest.param(redis_stores, id="redis", marks=pytest.mark.services),
    ]
)
def make(request: pytest.FixtureRequest) -> Iterator[MakeHarness]:
    stores = request.param(f"execmesh:test:coordinator:{uuid.uuid4().hex}")
    store_of = next(stores)
    yield lambda capacity=SMALL: Harness(store_of(capacity))
    next(stores, None)


def completed(execution_id: str) -> ExecutionCompleted:
    return ExecutionCompleted(execution_id=execution_id, exit_code=0)


def test_a_valid_request_is_accepted_with_its_limits_and_a_lease(make: MakeHarness) -> None:
    harness = make()
    limits = Limits(timeout_seconds=5, memory_mb=128, cpu_millis=250, output_bytes=1000)

    status = harness.post(requested("ex-1", limits=limits, language="py"), "req-1")

    assert status == 202
    [event] = harness.sender.sent
    accepted = ExecutionAccepted.model_validate(event.data)
    assert event.id == derive_event_id("/test\nreq-1", ExecutionAccepted.TYPE, subject="ex-1")
    assert accepted.limits == limits
    assert (accepted.spec.language, accepted.user_id, accepted.priority) == (
        "python",
        "alice",
        Priority.NORMAL,
    )
    assert accepted.lease_expires_at == datetime.fromtimestamp(START + 5 + LEASE_SECONDS, UTC)


def test_a_request_beyond_the_limits_is_rejected_with_a_reason(make: MakeHarness) -> None:
    harness = make()
    limits = Limits(timeout_seconds=500, memory_mb=128, cpu_millis=250, output_bytes=1000)

    harness.post(requested("ex-1", limits=limits), "req-1")

    [event] = harness.of_type(ExecutionRejected)
    rejected = ExecutionRejected.model_validate(event.data)
    assert (rejected.code, rejected.user_id) == ("timeout_too_large", "alice")
    assert harness.coordinator.store.usage().running == 0


def test_a_request_for_an_unknown_language_is_rejected(make: MakeHarness) -> None:
    harness = make()

    harness.post(requested("ex-1", language="cobol"), "req-1")

    [event] = harness.of_type(ExecutionRejected)
    assert event.data["code"] == "unknown_runtime"


def test_a_request_over_the_user_limit_is_queued_with_its_position(make: MakeHarness) -> None:
    harness = make()
    for n in range(4):
        harness.post(requested(f"ex-{n}"), f"req-{n}")

    positions = [
        ExecutionQueued.model_validate(e.data).position for e in harness.of_type(ExecutionQueued)
    ]
    assert harness.take() == [
        ("accepted", "ex-0"),
        ("accepted", "ex-1"),
        ("queued", "ex-2"),
        ("queued", "ex-3"),
    ]
    assert positions == [0, 1]


def test_the_queued_event_reports_the_position(make: MakeHarness) -> None:
    harness = make(Capacity(max_global=1))
    harness.post(requested("ex-0"), "req-0")
    harness.post(requested("ex-1"), "req-1")
    harness.post(requested("ex-2", priority=Priority.HIGH), "req-2")

    queued = [ExecutionQueued.model_validate(e.data) for e in harness.of_type(ExecutionQueued)]

    assert [(q.execution_id, q.position, q.priority) for q in queued] == [
        ("ex-1", 0, Priority.NORMAL),
        ("ex-2", 0, Priority.HIGH),
    ]


def test_a_terminal_event_releases_the_slot_and_accepts_the_next(make: MakeHarness) -> None:
    harness = make(Capacity(max_global=1))
    harness.post(requested("ex-0"), "req-0")
    harness.post(requested("ex-1"), "req-1")
    harness.take()

    harness.post(completed("ex-0"), "done-0")
    harness.post(ExecutionTimedOut(execution_id="ex-0", timeout_seconds=10), "late-0")

    assert harness.take() == [("accepted", "ex-1")]
    assert harness.coordinator.store.usage().running == 1


def test_a_retried_terminal_event_re_announces_the_same_acceptances(make: MakeHarness) -> None:
    harness = make(Capacity(max_global=1))
    for n in range(3):
        harness.post(requested(f"ex-{n}"), f"req-{n}")
    harness.post(completed("ex-0"), "done-0")
    first = harness.of_type(ExecutionAccepted)[-1]
    harness.take()

    # The process died after emitting but before marking the event processed.
    harness.restarted().post(completed("ex-0"), "done-0")

    [again] = harness.sender.sent
    assert (again.id, again.data) == (first.id, first.data)
    assert harness.coordinator.store.position("ex-2") == 0


def test_a_duplicate_delivery_is_answered_without_emitting(make: MakeHarness) -> None:
    harness = make(Capacity(max_global=1))
    harness.post(requested("ex-0"), "req-0")
    harness.post(requested("ex-1"), "req-1")
    harness.post(completed("ex-0"), "done-0")
    harness.take()

    assert harness.post(completed("ex-0"), "done-0") == 202
    assert harness.take() == []


def test_cancelling_a_queued_execution_emits_cancelled(make: MakeHarness) -> None:
    harness = make(Capacity(max_global=1))
    harness.post(requested("ex-0"), "req-0")
    harness.post(requested("ex-1"), "req-1")
    harness.take()

    harness.post(ExecutionCancelRequested(execution_id="ex-1", reason="no longer needed"), "c-1")
    harness.post(completed("ex-0"), "done-0")

    [event] = harness.of_type(ExecutionCancelled)
    assert event.data["reason"] == "no longer needed"
    assert harness.take() == [("cancelled", "ex-1")]


def test_cancelling_a_running_execution_is_left_to_the_saga(make: MakeHarness) -> None:
    harness = make()
    harness.post(requested("ex-0"), "req-0")
    harness.take()

    assert harness.post(ExecutionCancelRequested(execution_id="ex-0"), "c-0") == 202
    assert harness.take() == []


def test_the_ping_frees_an_expired_lease_and_accepts_the_next(make: MakeHarness) -> None:
    harness = make(Capacity(max_global=1))
    limits = Limits(timeout_seconds=10, memory_mb=128, cpu_millis=250, output_bytes=1000)
    harness.post(requested("ex-lost", limits=limits), "req-0")
    harness.post(requested("ex-next"), "req-1")
    harness.take()

    harness.clock.now = START + 10 + LEASE_SECONDS - 1
    harness.post(PingTick(), "tick-1", source="/apis/v1/namespaces/execmesh/pingsources/tick")
    nothing_yet = harness.take()
    harness.clock.now = START + 10 + LEASE_SECONDS
    harness.post(PingTick(), "tick-2", source="/apis/v1/namespaces/execmesh/pingsources/tick")

    assert nothing_yet == []
    assert harness.take() == [("accepted", "ex-next")]


def test_a_ping_with_the_ping_source_payload_is_accepted(make: MakeHarness) -> None:
    harness = make()

    assert harness.post_raw(PingTick.TYPE, {"tick": True}, "tick-1") == 202


def test_a_malformed_request_is_refused_with_400(make: MakeHarness) -> None:
    harness = make()

    status = harness.post_raw(ExecutionQueued.TYPE.replace("queued", "requested"), {}, "bad-1")

    assert status == 400
    assert harness.sender.sent == []
