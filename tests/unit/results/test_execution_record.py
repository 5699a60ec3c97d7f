from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionRejected,
    ExecutionRequested,
    ExecutionSpec,
    ExecutionTimedOut,
    FailureType,
    Limits,
    Payload,
    PodDeleteRequested,
    PodRunning,
    Priority,
    ResourceUsage,
    ResultStored,
    StreamOutput,
    TerminalStatus,
)
from execmesh.mesh.envelope import IncomingEvent
from execmesh.results.record import (
    LATE_RESULTS_LIMIT,
    ExecutionDocument,
    ExecutionStatus,
    Projection,
    project,
)

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
EXEC = "exec-1"
SPEC = ExecutionSpec(language="ruby", version="3.2", script="puts 1")
LIMITS = Limits(timeout_seconds=5, memory_mb=64, cpu_millis=250, output_bytes=1024)

REQUESTED = ExecutionRequested(execution_id=EXEC, user_id="bob", spec=SPEC, submitted_at=T0)
QUEUED = ExecutionQueued(execution_id=EXEC, user_id="bob", priority=Priority.LOW, position=3)
ACCEPTED = ExecutionAccepted(
    execution_id=EXEC,
    user_id="bob",
    spec=SPEC,
    limits=LIMITS,
    priority=Priority.LOW,
    lease_expires_at=T0,
)
RUNNING = PodRunning(execution_id=EXEC, pod_name="exec-exec-1", started_at=T0)
COMPLETED = ExecutionCompleted(
    execution_id=EXEC,
    exit_code=3,
    stdout=StreamOutput(data="1\n", size=2),
    stderr=StreamOutput(size=100_000, ref="exec-1/stderr"),
    usage=ResourceUsage(wall_ms=12, cpu_ms=5, peak_memory_bytes=1 << 20),
)
FAILED = ExecutionFailed(execution_id=EXEC, error_type=FailureType.OOM_KILLED, message="killed")
TIMED_OUT = ExecutionTimedOut(execution_id=EXEC, timeout_seconds=5)
CANCELLED = ExecutionCancelled(execution_id=EXEC, reason="user asked")
REJECTED = ExecutionRejected(execution_id=EXEC, user_id="bob", code="limits", reason="too big")


def event(payload: Payload, id: str = "") -> IncomingEvent:
    return IncomingEvent.of(payload, id=id or f"id-{payload.TYPE}", source="/test")


def apply(*payloads: Payload, start: ExecutionDocument | None = None) -> Projection:
    projection = Projection(start)
    for index, payload in enumerate(payloads):
        at = T0 + timedelta(seconds=index)
        projection = project(projection.document, event(payload), at)
    return projection


def types(payloads: tuple[Payload, ...]) -> list[type[Payload]]:
    return [type(p) for p in payloads]


LIFECYCLE: dict[str, tuple[list[Payload], ExecutionStatus]] = {
    "requested creates the document": ([REQUESTED], ExecutionStatus.REQUESTED),
    "queued advances requested": ([REQUESTED, QUEUED], ExecutionStatus.QUEUED),
    "accepted means running": ([REQUESTED, QUEUED, ACCEPTED], ExecutionStatus.RUNNING),
    "pod running means running": ([ACCEPTED, RUNNING], ExecutionStatus.RUNNING),
    "requested after queued does not go back": ([QUEUED, REQUESTED], ExecutionStatus.QUEUED),
    "queued after accepted does not go back": ([ACCEPTED, QUEUED], ExecutionStatus.RUNNING),
    "accepted after the result does not go back": (
        [COMPLETED, ACCEPTED],
        ExecutionStatus.COMPLETED,
    ),
    "pod running after the result does not go back": (
        [ACCEPTED, COMPLETED, RUNNING],
        ExecutionStatus.COMPLETED,
    ),
    "a terminal event before pod running ends it": ([ACCEPTED, FAILED], ExecutionStatus.FAILED),
    "a terminal event may come first of all": ([TIMED_OUT], ExecutionStatus.TIMED_OUT),
    "rejected ends a request": ([REQUESTED, REJECTED], ExecutionStatus.REJECTED),
    "cancelled ends a queued execution": ([QUEUED, CANCELLED], ExecutionStatus.CANCELLED),
}


@pytest.mark.parametrize("payloads,status", LIFECYCLE.values(), ids=list(LIFECYCLE))
def test_lifecycle_status(payloads: list[Payload], status: ExecutionStatus) -> None:
    document = apply(*payloads).document
    assert document is not None and document.status is status


def test_facts_are_kept_even_from_events_too_late_to_move_the_status() -> None:
    document = apply(ACCEPTED, RUNNING, COMPLETED, REQUESTED, QUEUED).document
    assert document is not None
    assert (document.user_id, document.language, document.language_version) == (
        "bob",
        "ruby",
        "3.2",
    )
    assert document.submitted_at == T0
    assert document.limits == LIMITS and document.pod_name == "exec-exec-1"
    assert document.queue_position is None  # it never meant anything once running
    assert document.status is ExecutionStatus.COMPLETED


def test_the_queue_position_follows_the_queue() -> None:
    later = QUEUED.model_copy(update={"position": 1})
    document = apply(QUEUED, later).document
    assert document is not None and document.queue_position == 1


@pytest.mark.parametrize(
    "payload,status,emitted",
    [
        (COMPLETED, TerminalStatus.COMPLETED, [ResultStored, PodDeleteRequested]),
        (FAILED, TerminalStatus.FAILED, [ResultStored, PodDeleteRequested]),
        (TIMED_OUT, TerminalStatus.TIMED_OUT, [ResultStored, PodDeleteRequested]),
        (CANCELLED, TerminalStatus.CANCELLED, [ResultStored, PodDeleteRequested]),
        (REJECTED, TerminalStatus.REJECTED, [ResultStored]),
    ],
)
def test_the_first_terminal_event_becomes_the_result_and_is_announced(
    payload: Payload, status: TerminalStatus, emitted: list[type[Payload]]
) -> None:
    running = apply(ACCEPTED, RUNNING).document
    projection = project(running, event(payload, "winner"), T0 + timedelta(minutes=1))
    document = projection.document
    assert projection.changed and document is not None
    assert document.result is not None and document.result.status is status
    assert (document.result.event_id, document.result.event_source) == ("winner", "/test")
    assert document.status.value == status.value
    assert document.finished_at == T0 + timedelta(minutes=1)
    assert types(projection.emitted) == emitted
    assert projection.emitted[0] == ResultStored(execution_id=EXEC, status=status)


def test_the_result_keeps_what_the_event_reported() -> None:
    result = apply(COMPLETED).document.result  # type: ignore[union-attr]
    assert result is not None
    assert (result.exit_code, result.stdout, result.stderr) == (
        3,
        COMPLETED.stdout,
        COMPLETED.stderr,
    )
    assert result.usage == COMPLETED.usage
    rejected = apply(REJECTED).document
    assert rejected is not None and rejected.result is not None
    assert (rejected.result.code, rejected.result.message, rejected.user_id) == (
        "limits",
        "too big",
        "bob",
    )


def test_a_second_terminal_event_is_recorded_late_not_applied() -> None:
    first = apply(ACCEPTED, COMPLETED).document
    projection = project(first, event(TIMED_OUT, "second"), T0 + timedelta(hours=1))
    document = projection.document
    assert projection.changed and projection.emitted == ()
    assert document is not None and document.status is ExecutionStatus.COMPLETED
    assert document.result == first.result  # type: ignore[union-attr]
    (late,) = document.late_results
    assert (late.status, late.event_id, late.received_at) == (
        TerminalStatus.TIMED_OUT,
        "second",
        T0 + timedelta(hours=1),
    )


def test_a_redelivered_winner_re_announces_and_changes_nothing() -> None:
    first = project(None, event(FAILED, "w"), T0)
    again = project(first.document, event(FAILED, "w"), T0 + timedelta(seconds=9))
    assert again.emitted == first.emitted
    assert not again.changed and again.document == first.document


def test_a_redelivered_late_result_is_recorded_once() -> None:
    first = project(None, event(FAILED, "w"), T0).document
    late = project(first, event(COMPLETED, "late"), T0).document
    again = project(late, event(COMPLETED, "late"), T0)
    assert not again.changed and again.emitted == ()
    assert again.document is not None and len(again.document.late_results) == 1


def test_late_results_are_bounded_and_the_overflow_counted() -> None:
    document = project(None, event(FAILED, "w"), T0).document
    for index in range(LATE_RESULTS_LIMIT + 3):
        document = project(document, event(COMPLETED, f"late-{index}"), T0).document
    assert document is not None
    assert len(document.late_results) == LATE_RESULTS_LIMIT
    assert document.late_results_dropped == 3
    assert document.result is not None and document.result.status is TerminalStatus.FAILED


def test_a_lifecycle_event_that_changes_nothing_is_not_saved() -> None:
    document = apply(ACCEPTED, RUNNING).document
    assert not project(document, event(RUNNING, "again"), T0 + timedelta(hours=1)).changed


@pytest.mark.parametrize(
    "order", list(itertools.permutations([REQUESTED, QUEUED, ACCEPTED, RUNNING, COMPLETED]))
)
def test_any_order_ends_with_the_result_and_the_status_never_goes_back(
    order: tuple[Payload, ...],
) -> None:
    document: ExecutionDocument | None = None
    ranks = []
    for payload in order:
        document = project(document, event(payload), T0).document
        assert document is not None
        ranks.append(document.status.rank)
    assert ranks == sorted(ranks)
    assert document is not None and document.status is ExecutionStatus.COMPLETED
    assert document.user_id == "bob" and document.limits == LIMITS


def test_the_stored_form_reads_back_equal() -> None:
    document = apply(REQUESTED, ACCEPTED, RUNNING, COMPLETED, FAILED).document
    assert document is not None
    stored = {"_id": EXEC, "version": 0, **document.to_document()}
    assert ExecutionDocument.from_document(stored) == document
    assert isinstance(stored["updated_at"], datetime)


def test_a_result_seen_without_pod_running_takes_its_start_time_from_the_terminal_event() -> None:
    started = T0 + timedelta(milliseconds=5)
    completed = COMPLETED.model_copy(update={"started_at": started})

    document = apply(REQUESTED, ACCEPTED, completed).document

    assert document is not None and document.started_at == started


def test_the_start_time_pod_running_reported_is_kept_over_the_terminal_events() -> None:
    completed = COMPLETED.model_copy(update={"started_at": T0 + timedelta(hours=1)})

    document = apply(REQUESTED, ACCEPTED, RUNNING, completed).document

    assert document is not None and document.started_at == T0
