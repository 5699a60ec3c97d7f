from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionSpec,
    ExecutionTimedOut,
    FailureType,
    Limits,
    Payload,
    PodCreated,
    PodCreateRequested,
    PodDeleted,
    PodDeleteRequested,
    PodRunning,
    Priority,
    SagaCompensated,
    SagaCompleted,
    TerminalStatus,
)
from execmesh.saga.machine import DeadlineCheck, Message, Phase, Policy, Saga, Step, advance

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
POLICY = Policy(
    grace=timedelta(seconds=30),
    retention=timedelta(days=1),
    startup=timedelta(minutes=5),
    remembered_events=4,
)
EXEC = "exec-1"
LIMITS = Limits(timeout_seconds=10, memory_mb=128, cpu_millis=500, output_bytes=65536)
SPEC = ExecutionSpec(language="python", version="3.11", script="print(1)")

ACCEPTED = ExecutionAccepted(
    execution_id=EXEC,
    user_id="alice",
    spec=SPEC,
    limits=LIMITS,
    priority=Priority.NORMAL,
    lease_expires_at=T0 + timedelta(minutes=5),
)
CREATED = PodCreated(execution_id=EXEC, namespace="execmesh", pod_name="exec-exec-1")
RUNNING = PodRunning(execution_id=EXEC, pod_name="exec-exec-1")
DELETED = PodDeleted(execution_id=EXEC, namespace="execmesh", pod_name="exec-exec-1")
CANCEL = ExecutionCancelRequested(execution_id=EXEC, reason="user pressed stop")
COMPLETED = ExecutionCompleted(execution_id=EXEC, exit_code=0)
FAILED = ExecutionFailed(execution_id=EXEC, error_type=FailureType.OOM_KILLED, message="oom")
TIMED_OUT = ExecutionTimedOut(execution_id=EXEC, timeout_seconds=10)
CANCELLED = ExecutionCancelled(execution_id=EXEC, reason="cancelled while queued")
TICK = DeadlineCheck()
DEADLINE = T0 + timedelta(seconds=40)
STARTUP_ENDS = T0 + POLICY.startup


def saga_in(phase: Phase, **changes: object) -> Saga:
    base = Saga(
        execution_id=EXEC,
        phase=phase,
        updated_at=T0,
        version=3,
        user_id="alice",
        timeout_seconds=10,
        accepted_at=T0,
        deadline=DEADLINE,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


AWAITING = Saga(EXEC, Phase.AWAITING_ACCEPTANCE, T0, version=1, cancel_reason="early")
POD_REQUESTED = saga_in(Phase.POD_REQUESTED)
POD_CREATED = saga_in(Phase.POD_CREATED, pod_name="exec-exec-1")
RUNNING_SAGA = saga_in(Phase.RUNNING, pod_name="exec-exec-1")
CANCELLING = saga_in(Phase.CANCELLING, cancel_reason="user pressed stop")
DONE_OK = saga_in(Phase.FINISHED, outcome=TerminalStatus.COMPLETED, deadline=None)
DONE_CANCELLED = saga_in(Phase.FINISHED, outcome=TerminalStatus.CANCELLED, deadline=None)
DONE_TIMED_OUT = saga_in(Phase.FINISHED, outcome=TerminalStatus.TIMED_OUT, deadline=None)
DONE_FAILED = saga_in(Phase.FINISHED, outcome=TerminalStatus.FAILED, deadline=None)
# Before the pod runs, the deadline is the end of the start-up budget.
STARTING = saga_in(Phase.POD_REQUESTED, deadline=STARTUP_ENDS)
STARTED = saga_in(Phase.POD_CREATED, pod_name="exec-exec-1", deadline=STARTUP_ENDS)
BEFORE_DEADLINE = DEADLINE - timedelta(seconds=1)

Row = tuple[
    Saga | None, Message, datetime, Phase | None, TerminalStatus | None, list[type[Payload]]
]
OK, FAIL, TIME, CANC = (
    TerminalStatus.COMPLETED,
    TerminalStatus.FAILED,
    TerminalStatus.TIMED_OUT,
    TerminalStatus.CANCELLED,
)
COMPENSATE = [PodDeleteRequested, SagaCompensated]

TRANSITIONS: dict[str, Row] = {
    # execution.accepted
    "accepted starts a saga and asks for the pod": (
        None, ACCEPTED, T0, Phase.POD_REQUESTED, None, [PodCreateRequested]),
    "accepted after a cancel asks for no pod and ends cancelled": (
        AWAITING, ACCEPTED, T0, Phase.FINISHED, CANC, [ExecutionCancelled, SagaCompensated]),
    "accepted again while the pod is requested changes nothing": (
        POD_REQUESTED, ACCEPTED, T0, Phase.POD_REQUESTED, None, []),
    "accepted again while running changes nothing": (
        RUNNING_SAGA, ACCEPTED, T0, Phase.RUNNING, None, []),
    "accepted after the end starts nothing": (DONE_OK, ACCEPTED, T0, Phase.FINISHED, OK, []),
    # pod.created
    "pod created advances a requested pod": (
        POD_REQUESTED, CREATED, T0, Phase.POD_CREATED, None, []),
    "pod created after pod running keeps running": (
        RUNNING_SAGA, CREATED, T0, Phase.RUNNING, None, []),
    "pod created while cancelling keeps cancelling": (
        CANCELLING, CREATED, T0, Phase.CANCELLING, None, []),
    "pod created after a cancel deletes the late pod": (
        DONE_CANCELLED, CREATED, T0, Phase.FINISHED, CANC, [PodDeleteRequested]),
    "pod created after a deadline deletes the late pod": (
        DONE_TIMED_OUT, CREATED, T0, Phase.FINISHED, TIME, [PodDeleteRequested]),
    "pod created after a failure deletes the late pod": (
        DONE_FAILED, CREATED, T0, Phase.FINISHED, FAIL, [PodDeleteRequested]),
    "pod created after a completion changes nothing": (
        DONE_OK, CREATED, T0, Phase.FINISHED, OK, []),
    "pod created for an unknown saga is ignored": (None, CREATED, T0, None, None, []),
    # pod.running
    "pod running advances a requested pod": (
        POD_REQUESTED, RUNNING, T0, Phase.RUNNING, None, []),
    "pod running advances a created pod": (POD_CREATED, RUNNING, T0, Phase.RUNNING, None, []),
    "pod running twice changes nothing": (RUNNING_SAGA, RUNNING, T0, Phase.RUNNING, None, []),
    "pod running while cancelling keeps cancelling": (
        CANCELLING, RUNNING, T0, Phase.CANCELLING, None, []),
    "pod running after the end changes nothing": (DONE_OK, RUNNING, T0, Phase.FINISHED, OK, []),
    "pod running for an unknown saga is ignored": (None, RUNNING, T0, None, None, []),
    # terminal events
    "completed while running ends the saga": (
        RUNNING_SAGA, COMPLETED, T0, Phase.FINISHED, OK, [SagaCompleted]),
    "completed before pod running ends the saga": (
        POD_CREATED, COMPLETED, T0, Phase.FINISHED, OK, [SagaCompleted]),
    "completed before pod created ends the saga": (
        POD_REQUESTED, COMPLETED, T0, Phase.FINISHED, OK, [SagaCompleted]),
    "completed while cancelling wins over the cancel": (
        CANCELLING, COMPLETED, T0, Phase.FINISHED, OK, [SagaCompleted]),
    "failed while running compensates": (
        RUNNING_SAGA, FAILED, T0, Phase.FINISHED, FAIL, COMPENSATE),
    "failed before the pod exists compensates": (
        POD_REQUESTED, FAILED, T0, Phase.FINISHED, FAIL, COMPENSATE),
    "timed out while running compensates": (
        RUNNING_SAGA, TIMED_OUT, T0, Phase.FINISHED, TIME, COMPENSATE),
    "cancelled while running compensates": (
        RUNNING_SAGA, CANCELLED, T0, Phase.FINISHED, CANC, COMPENSATE),
    "a second terminal event is ignored": (DONE_OK, FAILED, T0, Phase.FINISHED, OK, []),
    "a terminal event after a cancel is ignored": (
        DONE_CANCELLED, COMPLETED, T0, Phase.FINISHED, CANC, []),
    "cancelled before acceptance leaves a tombstone": (
        AWAITING, CANCELLED, T0, Phase.FINISHED, CANC, []),
    "a terminal event for an unknown saga leaves a tombstone": (
        None, CANCELLED, T0, Phase.FINISHED, CANC, []),
    # execution.cancel_requested
    "cancel before acceptance is remembered": (
        None, CANCEL, T0, Phase.AWAITING_ACCEPTANCE, None, []),
    "cancel twice before acceptance changes nothing": (
        AWAITING, CANCEL, T0, Phase.AWAITING_ACCEPTANCE, None, []),
    "cancel while the pod is requested deletes it": (
        POD_REQUESTED, CANCEL, T0, Phase.CANCELLING, None, [PodDeleteRequested]),
    "cancel while the pod is created deletes it": (
        POD_CREATED, CANCEL, T0, Phase.CANCELLING, None, [PodDeleteRequested]),
    "cancel while running deletes the pod": (
        RUNNING_SAGA, CANCEL, T0, Phase.CANCELLING, None, [PodDeleteRequested]),
    "cancel while cancelling changes nothing": (
        CANCELLING, CANCEL, T0, Phase.CANCELLING, None, []),
    "cancel after the end changes nothing": (DONE_OK, CANCEL, T0, Phase.FINISHED, OK, []),
    # pod.deleted
    "pod deleted while cancelling ends cancelled": (
        CANCELLING, DELETED, T0, Phase.FINISHED, CANC, [ExecutionCancelled, SagaCompensated]),
    "pod deleted while running changes nothing": (
        RUNNING_SAGA, DELETED, T0, Phase.RUNNING, None, []),
    "pod deleted after the end changes nothing": (
        DONE_CANCELLED, DELETED, T0, Phase.FINISHED, CANC, []),
    "pod deleted for an unknown saga is ignored": (None, DELETED, T0, None, None, []),
    # the deadline tick
    "deadline passed while running times out and compensates": (
        RUNNING_SAGA, TICK, DEADLINE, Phase.FINISHED, TIME,
        [ExecutionTimedOut, PodDeleteRequested, SagaCompensated]),
    "start-up budget spent before the pod was created fails the run": (
        STARTING, TICK, STARTUP_ENDS, Phase.FINISHED, FAIL,
        [ExecutionFailed, PodDeleteRequested, SagaCompensated]),
    "start-up budget spent before the pod ran fails the run": (
        STARTED, TICK, STARTUP_ENDS, Phase.FINISHED, FAIL,
        [ExecutionFailed, PodDeleteRequested, SagaCompensated]),
    "start-up budget not yet spent changes nothing": (
        STARTED, TICK, STARTUP_ENDS - timedelta(seconds=1), Phase.POD_CREATED, None, []),
    "deadline not yet passed changes nothing": (
        RUNNING_SAGA, TICK, BEFORE_DEADLINE, Phase.RUNNING, None, []),
    "deadline passed while cancelling ends cancelled and deletes again": (
        CANCELLING, TICK, DEADLINE, Phase.FINISHED, CANC,
        [PodDeleteRequested, ExecutionCancelled, SagaCompensated]),
    "deadline tick while awaiting acceptance changes nothing": (
        AWAITING, TICK, DEADLINE, Phase.AWAITING_ACCEPTANCE, None, []),
    "deadline tick after the end changes nothing": (
        DONE_OK, TICK, DEADLINE, Phase.FINISHED, OK, []),
    "deadline tick without a saga changes nothing": (None, TICK, DEADLINE, None, None, []),
}  # fmt: skip


@pytest.mark.parametrize(
    "start,message,now,phase,outcome,emitted", TRANSITIONS.values(), ids=list(TRANSITIONS)
)
def test_transition(
    start: Saga | None,
    message: Message,
    now: datetime,
    phase: Phase | None,
    outcome: TerminalStatus | None,
    emitted: list[type[Payload]],
) -> None:
    step = advance(start, "event-1", message, now, POLICY)
    assert [type(p) for p in step.emitted] == emitted
    assert all(getattr(p, "execution_id", EXEC) == EXEC for p in step.emitted)
    if phase is None:
        assert step.saga is None
        return
    assert step.saga is not None
    assert step.saga.phase is phase
    assert step.saga.outcome is outcome
    changed = step.saga != start
    assert step.changed == (changed or bool(emitted))
    if step.changed:
        assert step.saga.applied[-1].key == "event-1"
        assert step.saga.updated_at == now


def test_accepted_sets_the_deadline_to_the_end_of_the_start_up_budget() -> None:
    step = advance(None, "accepted", ACCEPTED, T0, POLICY)
    assert step.saga is not None
    assert step.saga.deadline == T0 + timedelta(minutes=5)
    assert step.saga.accepted_at == T0
    assert step.saga.version == 0
    (create,) = step.emitted
    assert create == PodCreateRequested(execution_id=EXEC, spec=SPEC, limits=LIMITS)


def test_finishing_clears_the_deadline_and_schedules_the_purge() -> None:
    step = advance(RUNNING_SAGA, "done", COMPLETED, T0, POLICY)
    assert step.saga is not None
    assert step.saga.deadline is None
    assert step.saga.purge_after == T0 + POLICY.retention


def test_cancelling_gives_the_deletion_a_grace_deadline() -> None:
    now = T0 + timedelta(seconds=5)
    step = advance(RUNNING_SAGA, "cancel", CANCEL, now, POLICY)
    assert step.saga is not None
    assert step.saga.deadline == now + POLICY.grace
    assert step.emitted == (PodDeleteRequested(execution_id=EXEC, reason="user pressed stop"),)


def test_the_timed_out_event_carries_the_execution_timeout() -> None:
    step = advance(RUNNING_SAGA, "tick", TICK, DEADLINE, POLICY)
    timed_out = step.emitted[0]
    assert timed_out == ExecutionTimedOut(execution_id=EXEC, timeout_seconds=10)


def test_a_redelivered_event_re_emits_the_same_events_and_changes_nothing() -> None:
    first = advance(RUNNING_SAGA, "tick-1", TICK, DEADLINE, POLICY)
    assert first.saga is not None
    again = advance(first.saga, "tick-1", TICK, DEADLINE + timedelta(minutes=1), POLICY)
    assert again.emitted == first.emitted
    assert not again.changed
    assert again.saga == first.saga


def test_the_same_input_always_gives_the_same_output() -> None:
    assert advance(RUNNING_SAGA, "k", TICK, DEADLINE, POLICY) == advance(
        RUNNING_SAGA, "k", TICK, DEADLINE, POLICY
    )


def test_a_saga_remembers_only_its_latest_events() -> None:
    saga: Saga | None = None
    keys = [f"e{i}" for i in range(7)]
    for key in keys:
        saga = advance(saga, key, CANCEL if saga is None else CREATED, T0, POLICY).saga
        saga = replace(saga, phase=Phase.POD_REQUESTED) if saga else None
    assert saga is not None
    assert [a.key for a in saga.applied] == keys[-POLICY.remembered_events :]


def run(events: list[Message], start: Saga | None = None) -> tuple[Step, list[Payload]]:
    saga, emitted, step = start, [], Step(start)
    for index, message in enumerate(events):
        step = advance(saga, f"event-{index}", message, T0 + timedelta(seconds=index), POLICY)
        saga = step.saga
        emitted.extend(step.emitted)
    return step, emitted


@pytest.mark.parametrize("order", list(itertools.permutations([CREATED, RUNNING, COMPLETED])))
def test_any_order_of_pod_events_and_completion_ends_completed_once(order: list[Message]) -> None:
    step, emitted = run([ACCEPTED, *order])
    assert step.saga is not None and step.saga.outcome is TerminalStatus.COMPLETED
    assert [type(p) for p in emitted] == [PodCreateRequested, SagaCompleted]


def test_cancel_before_acceptance_never_creates_a_pod() -> None:
    step, emitted = run([CANCEL, ACCEPTED, ACCEPTED, RUNNING, COMPLETED])
    assert step.saga is not None and step.saga.outcome is TerminalStatus.CANCELLED
    assert [type(p) for p in emitted] == [ExecutionCancelled, SagaCompensated]
    assert emitted[0] == ExecutionCancelled(execution_id=EXEC, reason="user pressed stop")


def test_cancel_while_running_deletes_the_pod_then_ends_cancelled() -> None:
    step, emitted = run([ACCEPTED, CREATED, RUNNING, CANCEL, DELETED, CANCELLED, RUNNING])
    assert step.saga is not None and step.saga.outcome is TerminalStatus.CANCELLED
    assert [type(p) for p in emitted] == [
        PodCreateRequested,
        PodDeleteRequested,
        ExecutionCancelled,
        SagaCompensated,
    ]


def test_a_delete_that_overtakes_the_create_is_followed_by_another_delete() -> None:
    _, emitted = run([ACCEPTED, CANCEL, DELETED, CREATED])
    assert [type(p) for p in emitted] == [
        PodCreateRequested,
        PodDeleteRequested,
        ExecutionCancelled,
        SagaCompensated,
        PodDeleteRequested,
    ]


def test_two_terminal_events_end_the_saga_once_the_first_wins() -> None:
    step, emitted = run([ACCEPTED, RUNNING, FAILED, COMPLETED, TIMED_OUT])
    assert step.saga is not None and step.saga.outcome is TerminalStatus.FAILED
    assert [type(p) for p in emitted] == [PodCreateRequested, PodDeleteRequested, SagaCompensated]


def test_every_event_delivered_twice_emits_nothing_new() -> None:
    events: list[Message] = [ACCEPTED, CREATED, RUNNING, CANCEL, DELETED]
    saga: Saga | None = None
    once: list[Payload] = []
    twice: list[Payload] = []
    for index, message in enumerate(events):
        for delivery, sink in ((0, once), (1, twice)):
            step = advance(saga, f"event-{index}", message, T0 + timedelta(delivery), POLICY)
            saga = step.saga
            sink.extend(step.emitted)
    assert once == twice
    assert saga is not None and saga.outcome is TerminalStatus.CANCELLED


def test_the_event_that_finishes_a_saga_is_remembered_as_its_end() -> None:
    step = advance(RUNNING_SAGA, "tick-9", TICK, DEADLINE, POLICY)
    assert step.saga is not None and step.saga.ended_by == "tick-9"
    later = advance(step.saga, "late", CREATED, DEADLINE, POLICY)
    assert later.saga is not None and later.saga.ended_by == "tick-9"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def running(started_at: datetime | None = None) -> PodRunning:
    return PodRunning(execution_id=EXEC, pod_name="exec-exec-1", started_at=started_at)


def replay(events: list[tuple[float, Message]], start: Saga | None = None) -> list[Step]:
    """Applies each (seconds after T0, message) in turn; returns every step."""
    saga, steps = start, []
    for index, (seconds, message) in enumerate(events):
        step = advance(saga, f"event-{index}", message, at(seconds), POLICY)
        saga = step.saga
        steps.append(step)
    return steps


def test_pod_running_counts_the_timeout_from_the_pods_own_start() -> None:
    *_, step = replay([(0, ACCEPTED), (102, running(started_at=at(100)))])
    assert step.saga is not None and step.saga.phase is Phase.RUNNING
    assert step.saga.started_at == at(100)
    assert step.saga.deadline == at(100 + 10 + 30)


def test_pod_running_without_a_start_time_counts_from_its_handling() -> None:
    *_, step = replay([(0, ACCEPTED), (120, running())])
    assert step.saga is not None and step.saga.deadline == at(120 + 10 + 30)


def test_a_pod_start_time_ahead_of_the_clock_buys_no_extra_time() -> None:
    *_, step = replay([(0, ACCEPTED), (50, running(started_at=at(500)))])
    assert step.saga is not None and step.saga.deadline == at(50 + 10 + 30)


def test_a_slow_start_that_then_runs_within_its_timeout_is_not_timed_out() -> None:
    steps = replay(
        [
            (0, ACCEPTED),
            (150, CREATED),
            (200, running(started_at=at(200))),
            (200 + 10 + 30 - 1, TICK),  # 239 s after the acceptance, 39 s after the start
            (209, COMPLETED),
        ]
    )
    assert [type(p) for s in steps for p in s.emitted] == [PodCreateRequested, SagaCompleted]
    assert steps[-1].saga is not None and steps[-1].saga.outcome is TerminalStatus.COMPLETED


def test_a_run_silent_past_its_start_plus_timeout_plus_grace_is_timed_out() -> None:
    *_, step = replay([(0, ACCEPTED), (200, running(started_at=at(200))), (240, TICK)])
    assert [type(p) for p in step.emitted] == [
        ExecutionTimedOut,
        PodDeleteRequested,
        SagaCompensated,
    ]
    assert step.saga is not None and step.saga.outcome is TerminalStatus.TIMED_OUT


def test_a_pod_never_running_within_the_start_up_budget_fails_as_startup_timeout() -> None:
    *_, early, step = replay([(0, ACCEPTED), (60, CREATED), (299, TICK), (300, TICK)])
    assert early.emitted == ()
    failed, delete, compensated = step.emitted
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.STARTUP_TIMEOUT
    assert "300 s" in failed.message
    assert delete == PodDeleteRequested(execution_id=EXEC, reason="start-up budget exceeded")
    assert isinstance(compensated, SagaCompensated)
    assert compensated.status is TerminalStatus.FAILED
    assert compensated.reason.startswith("startup_timeout: ")
    assert step.saga is not None and step.saga.outcome is TerminalStatus.FAILED


def test_a_pod_running_after_the_start_up_failure_revives_nothing() -> None:
    steps = replay([(0, ACCEPTED), (300, TICK), (301, running(started_at=at(299)))])
    ended, late = steps[1].saga, steps[2]
    assert ended is not None and ended.phase is Phase.FINISHED
    assert late.saga == ended and late.emitted == () and not late.changed


@pytest.mark.parametrize(
    "start",
    [RUNNING_SAGA, CANCELLING, DONE_OK, DONE_FAILED, DONE_TIMED_OUT],
    ids=["running", "cancelling", "completed", "failed", "timed out"],
)
def test_a_pod_running_after_the_first_or_after_the_end_moves_nothing(start: Saga) -> None:
    step = advance(start, "late-running", running(started_at=at(1)), at(2), POLICY)
    assert step == Step(start)


def test_a_duplicate_pod_running_keeps_the_first_start() -> None:
    steps = replay([(0, ACCEPTED), (5, running(at(5))), (90, running(at(80)))])
    first, second = steps[1].saga, steps[2]
    assert first is not None and first.deadline == at(5 + 10 + 30)
    assert second.saga == first and not second.changed


def test_a_pod_running_before_pod_created_then_pod_created_keeps_the_run_deadline() -> None:
    *_, step = replay([(0, ACCEPTED), (30, running(at(30))), (31, CREATED)])
    assert step.saga is not None and step.saga.phase is Phase.RUNNING
    assert step.saga.deadline == at(30 + 10 + 30)


# Saved by the version before the start-up budget: acceptance + timeout + grace, no start time.
LEGACY_STARTING = saga_in(Phase.POD_CREATED, pod_name="exec-exec-1", deadline=at(40))


def test_a_saga_saved_before_the_start_up_budget_waits_for_it_instead_of_timing_out() -> None:
    waited, failed = replay([(41, TICK), (300, TICK)], start=LEGACY_STARTING)
    assert waited.emitted == () and waited.changed
    assert waited.saga is not None and waited.saga.deadline == STARTUP_ENDS
    assert waited.saga.phase is Phase.POD_CREATED
    assert [type(p) for p in failed.emitted] == [
        ExecutionFailed,
        PodDeleteRequested,
        SagaCompensated,
    ]


def test_a_saga_saved_before_the_start_up_budget_counts_the_timeout_from_pod_running() -> None:
    *_, step = replay([(35, running(at(35)))], start=LEGACY_STARTING)
    assert step.saga is not None and step.saga.deadline == at(35 + 10 + 30)
