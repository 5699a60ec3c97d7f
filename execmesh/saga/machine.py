"""The saga of one execution as a pure state machine: (saga, event, now) -> (saga, events to emit).

Phases::

    awaiting_acceptance --accepted--> finished(cancelled)      (a cancel came first)
    (none) --accepted--> pod_requested --pod.created--> pod_created --pod.running--> running
    pod_requested | pod_created | running:
        --completed--> finished(completed)               saga.completed
        --failed / timed_out / cancelled--> finished     pod.delete_requested, saga.compensated
        --cancel_requested--> cancelling                 pod.delete_requested
    pod_requested | pod_created --deadline passed--> finished(failed)
                                                         execution.failed (startup_timeout),
                                                         pod.delete_requested, saga.compensated
    running --deadline passed--> finished(timed_out)     execution.timed_out, pod.delete_requested,
                                                         saga.compensated
    cancelling --pod.deleted | deadline--> finished(cancelled)
                                                         execution.cancelled, saga.compensated

Two budgets, so that time the platform spends before the program starts (queueing, a restarted
function, pod start-up) is never counted against the user's timeout: until the pod runs, the
deadline is the acceptance plus the start-up budget; pod.running sets it to the moment the pod
started plus the user's timeout plus the grace. Cancelling gives the deletion a grace deadline.

Delivery is at least once and unordered, so every other (phase, event) pair is harmless: a
pod.running after the first, or after the end, changes nothing (no deadline moves back, no saga
revives), a terminal event before pod.running ends the saga, a second terminal event is
ignored. Each saga remembers the last events it applied with what they
emitted: a redelivered event re-emits exactly the same events (a handler that crashed after
saving but before emitting loses nothing) and changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionTimedOut,
    FailureType,
    Payload,
    PodCreated,
    PodCreateRequested,
    PodDeleted,
    PodDeleteRequested,
    PodRunning,
    SagaCompensated,
    SagaCompleted,
    TerminalStatus,
)

# Compensation steps named in saga.compensated. The coordinator releases the slot (and its
# cpu/memory budget) when it sees the terminal execution event.
DELETE_POD = "delete_pod"
RELEASE_SLOT = "release_slot"


class Phase(StrEnum):
    AWAITING_ACCEPTANCE = "awaiting_acceptance"
    POD_REQUESTED = "pod_requested"
    POD_CREATED = "pod_created"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINISHED = "finished"


STARTING_PHASES = frozenset({Phase.POD_REQUESTED, Phase.POD_CREATED})
RUNNING_PHASES = STARTING_PHASES | {Phase.RUNNING}
# Phases with a deadline: the ones a lost event could otherwise leave hanging forever.
ACTIVE_PHASES = RUNNING_PHASES | {Phase.CANCELLING}


@dataclass(frozen=True)
class DeadlineCheck:
    """The periodic tick: end the saga if its deadline has passed."""


Message = Payload | DeadlineCheck


@dataclass(frozen=True)
class Applied:
    key: str
    emitted: tuple[Payload, ...]


@dataclass(frozen=True)
class Saga:
    execution_id: str
    phase: Phase
    updated_at: datetime
    version: int = 0
    user_id: str | None = None
    timeout_seconds: float | None = None
    accepted_at: datetime | None = None
    # When the pod started running: the user's timeout counts from here.
    started_at: datetime | None = None
    # The one deadline of the current phase (start-up, run or cancel); the ping checks it.
    deadline: datetime | None = None
    pod_name: str | None = None
    namespace: str | None = None
    cancel_reason: str | None = None
    outcome: TerminalStatus | None = None
    # The key of the event that finished the saga: a redelivered tick finds what it ended.
    ended_by: str | None = None
    purge_after: datetime | None = None
    applied: tuple[Applied, ...] = ()

    def applied_as(self, key: str) -> Applied | None:
        return next((a for a in self.applied if a.key == key), None)


@dataclass(frozen=True)
class Policy:
    grace: timedelta
    retention: timedelta
    # How long a run may wait for its pod to run, from the acceptance.
    startup: timedelta
    remembered_events: int = 16


@dataclass(frozen=True)
class Step:
    """The outcome of one event: the saga to save (if ``changed``) and the events to emit."""

    saga: Saga | None
    emitted: tuple[Payload, ...] = ()
    changed: bool = False


def advance(saga: Saga | None, key: str, message: Message, now: datetime, policy: Policy) -> Step:
    """Apply ``message`` (unique per ``key``) to ``saga`` at ``now``."""
    if saga is not None and (seen := saga.applied_as(key)) is not None:
        return Step(saga, seen.emitted)
    new, emitted = _transition(saga, message, now, policy)
    if new is None or (new == saga and not emitted):
        return Step(saga)
    remembered = (*new.applied, Applied(key, emitted))[-policy.remembered_events :]
    if new.phase is Phase.FINISHED and (saga is None or saga.phase is not Phase.FINISHED):
        new = replace(new, ended_by=key)
    return Step(replace(new, updated_at=now, applied=remembered), emitted, changed=True)


def _transition(
    saga: Saga | None, message: Message, now: datetime, policy: Policy
) -> tuple[Saga | None, tuple[Payload, ...]]:
    if isinstance(message, ExecutionAccepted):
        return _accepted(saga, message, now, policy)
    if isinstance(message, ExecutionCancelRequested):
        return _cancel_requested(saga, message, now, policy)
    if isinstance(message, ExecutionCompleted | ExecutionFailed | ExecutionTimedOut):
        return _terminal(saga, message, now, policy)
    if isinstance(message, ExecutionCancelled):
        return _terminal(saga, message, now, policy)
    if saga is None:
        return None, ()
    if isinstance(message, PodCreated):
        return _pod_created(saga, message)
    if isinstance(message, PodRunning):
        return _pod_running(saga, message, now, policy)
    if isinstance(message, PodDeleted) and saga.phase is Phase.CANCELLING:
        return _finish_cancelled(saga, now, policy, delete_again=False)
    if isinstance(message, DeadlineCheck):
        return _deadline(saga, now, policy)
    return saga, ()


def _accepted(
    saga: Saga | None, event: ExecutionAccepted, now: datetime, policy: Policy
) -> tuple[Saga | None, tuple[Payload, ...]]:
    if saga is not None and saga.phase is not Phase.AWAITING_ACCEPTANCE:
        return saga, ()
    timeout = event.limits.timeout_seconds
    accepted = Saga(
        execution_id=event.execution_id,
        phase=Phase.POD_REQUESTED,
        updated_at=now,
        version=0 if saga is None else saga.version,
        user_id=event.user_id,
        timeout_seconds=timeout,
        accepted_at=now,
        deadline=now + policy.startup,
        applied=() if saga is None else saga.applied,
    )
    if saga is not None and saga.cancel_reason is not None:
        # The cancel won the race: no pod is ever asked for.
        cancelled = replace(accepted, cancel_reason=saga.cancel_reason)
        return _finish_cancelled(cancelled, now, policy, delete_again=False, steps=(RELEASE_SLOT,))
    create = PodCreateRequested(
        execution_id=event.execution_id, spec=event.spec, limits=event.limits
    )
    return accepted, (create,)


def _cancel_requested(
    saga: Saga | None, event: ExecutionCancelRequested, now: datetime, policy: Policy
) -> tuple[Saga | None, tuple[Payload, ...]]:
    if saga is None:
        remembered = Saga(
            execution_id=event.execution_id,
            phase=Phase.AWAITING_ACCEPTANCE,
            updated_at=now,
            cancel_reason=event.reason,
            purge_after=now + policy.retention,
        )
        return remembered, ()
    if saga.phase not in RUNNING_PHASES:
        return saga, ()
    cancelling = replace(
        saga, phase=Phase.CANCELLING, cancel_reason=event.reason, deadline=now + policy.grace
    )
    return cancelling, (PodDeleteRequested(execution_id=saga.execution_id, reason=event.reason),)


def _terminal(
    saga: Saga | None,
    event: ExecutionCompleted | ExecutionFailed | ExecutionTimedOut | ExecutionCancelled,
    now: datetime,
    policy: Policy,
) -> tuple[Saga | None, tuple[Payload, ...]]:
    status = _STATUS[type(event)]
    if saga is None or saga.phase is Phase.AWAITING_ACCEPTANCE:
        # Ended before it was accepted here (cancelled while queued): a tombstone, so a late
        # acceptance starts nothing.
        execution_id = event.execution_id
        start = saga or Saga(execution_id=execution_id, phase=Phase.FINISHED, updated_at=now)
        return _finished(start, status, now, policy), ()
    if saga.phase is Phase.FINISHED:
        return saga, ()
    finished = _finished(saga, status, now, policy)
    if status is TerminalStatus.COMPLETED:
        return finished, (SagaCompleted(execution_id=saga.execution_id, status=status),)
    reason = _terminal_reason(event)
    compensated = SagaCompensated(
        execution_id=saga.execution_id,
        status=status,
        reason=reason,
        steps=(DELETE_POD, RELEASE_SLOT),
    )
    delete = PodDeleteRequested(execution_id=saga.execution_id, reason=reason)
    return finished, (delete, compensated)


def _pod_created(saga: Saga, event: PodCreated) -> tuple[Saga, tuple[Payload, ...]]:
    if saga.phase in ACTIVE_PHASES:
        phase = Phase.POD_CREATED if saga.phase is Phase.POD_REQUESTED else saga.phase
        return replace(saga, phase=phase, pod_name=event.pod_name, namespace=event.namespace), ()
    if saga.phase is Phase.FINISHED and saga.outcome in (
        TerminalStatus.CANCELLED,
        TerminalStatus.TIMED_OUT,
        TerminalStatus.FAILED,
    ):
        # The pod was created after the saga ended the run and asked for its deletion (the
        # delete may have overtaken the create): ask again, deleting is idempotent.
        return saga, (PodDeleteRequested(execution_id=saga.execution_id, reason="late pod"),)
    return saga, ()


def _pod_running(
    saga: Saga, event: PodRunning, now: datetime, policy: Policy
) -> tuple[Saga, tuple[Payload, ...]]:
    if saga.phase not in STARTING_PHASES:
        # A second pod.running, or one after a cancel or the end: the first start stands.
        return saga, ()
    # The pod's own start time when it says; never later than now, so a clock ahead of ours
    # buys the program no extra time.
    started = now if event.started_at is None else min(_aware(event.started_at), now)
    running = replace(
        saga,
        phase=Phase.RUNNING,
        pod_name=saga.pod_name or event.pod_name,
        started_at=started,
        deadline=started + timedelta(seconds=saga.timeout_seconds or 0.0) + policy.grace,
    )
    return running, ()


def _deadline(saga: Saga, now: datetime, policy: Policy) -> tuple[Saga, tuple[Payload, ...]]:
    if saga.phase not in ACTIVE_PHASES or saga.deadline is None or saga.deadline > now:
        return saga, ()
    if saga.phase is Phase.CANCELLING:
        return _finish_cancelled(saga, now, policy, delete_again=True)
    if saga.phase in STARTING_PHASES:
        return _startup_deadline(saga, now, policy)
    return _timed_out(saga, now, policy)


def _startup_deadline(
    saga: Saga, now: datetime, policy: Policy
) -> tuple[Saga, tuple[Payload, ...]]:
    if saga.accepted_at is not None and saga.accepted_at + policy.startup > now:
        # Saved by a version that counted the start-up against the user's timeout, or while the
        # budget was shorter: wait out the start-up budget rather than end a healthy run.
        return replace(saga, deadline=saga.accepted_at + policy.startup), ()
    message = f"the pod did not start running within {policy.startup.total_seconds():g} s"
    failed = ExecutionFailed(
        execution_id=saga.execution_id, error_type=FailureType.STARTUP_TIMEOUT, message=message
    )
    emitted = (
        failed,
        PodDeleteRequested(execution_id=saga.execution_id, reason="start-up budget exceeded"),
        SagaCompensated(
            execution_id=saga.execution_id,
            status=TerminalStatus.FAILED,
            reason=_terminal_reason(failed),
            steps=(DELETE_POD, RELEASE_SLOT),
        ),
    )
    return _finished(saga, TerminalStatus.FAILED, now, policy), emitted


def _timed_out(saga: Saga, now: datetime, policy: Policy) -> tuple[Saga, tuple[Payload, ...]]:
    reason = "no result within the timeout and its grace"
    timed_out = ExecutionTimedOut(
        execution_id=saga.execution_id, timeout_seconds=saga.timeout_seconds or 0.0
    )
    emitted = (
        timed_out,
        PodDeleteRequested(execution_id=saga.execution_id, reason="deadline exceeded"),
        SagaCompensated(
            execution_id=saga.execution_id,
            status=TerminalStatus.TIMED_OUT,
            reason=reason,
            steps=(DELETE_POD, RELEASE_SLOT),
        ),
    )
    return _finished(saga, TerminalStatus.TIMED_OUT, now, policy), emitted


def _finish_cancelled(
    saga: Saga,
    now: datetime,
    policy: Policy,
    *,
    delete_again: bool,
    steps: tuple[str, ...] = (DELETE_POD, RELEASE_SLOT),
) -> tuple[Saga, tuple[Payload, ...]]:
    reason = saga.cancel_reason or "cancelled"
    emitted: tuple[Payload, ...] = (
        ExecutionCancelled(execution_id=saga.execution_id, reason=reason),
        SagaCompensated(
            execution_id=saga.execution_id,
            status=TerminalStatus.CANCELLED,
            reason=reason,
            steps=steps,
        ),
    )
    if delete_again:
        delete = PodDeleteRequested(execution_id=saga.execution_id, reason=reason)
        emitted = (delete, *emitted)
    return _finished(saga, TerminalStatus.CANCELLED, now, policy), emitted


def _finished(saga: Saga, status: TerminalStatus, now: datetime, policy: Policy) -> Saga:
    return replace(
        saga,
        phase=Phase.FINISHED,
        outcome=status,
        deadline=None,
        purge_after=now + policy.retention,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _terminal_reason(event: Payload) -> str:
    if isinstance(event, ExecutionFailed):
        return f"{event.error_type.value}: {event.message}"[:500]
    if isinstance(event, ExecutionCancelled):
        return event.reason
    return _STATUS[type(event)].value


_STATUS: dict[type[Payload], TerminalStatus] = {
    ExecutionCompleted: TerminalStatus.COMPLETED,
    ExecutionFailed: TerminalStatus.FAILED,
    ExecutionTimedOut: TerminalStatus.TIMED_OUT,
    ExecutionCancelled: TerminalStatus.CANCELLED,
}
