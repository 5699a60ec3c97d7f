"""The execution document (what ``GET /executions/{id}`` reads) and how events project onto it.

``project`` is pure: (document, event, now) -> (document, events to emit). Its rules:

- the lifecycle status only advances: requested < queued < running < terminal, whatever order
  the events arrive in; facts an event brings (user, language, limits, pod) are kept even when
  the event is too late to move the status;
- the first terminal event wins and becomes ``result``; a different terminal event later is
  recorded in ``late_results`` (bounded), never applied;
- the winner asks for cleanup (``pod.delete_requested``, except for a rejection, which never had
  a pod) and announces ``result.stored``; a redelivery of the winner re-emits the same events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionRejected,
    ExecutionRequested,
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

LATE_RESULTS_LIMIT = 10


class ExecutionStatus(StrEnum):
    REQUESTED = "requested"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def rank(self) -> int:
        return _RANK.get(self, len(_RANK))

    @property
    def is_terminal(self) -> bool:
        return self.rank == len(_RANK)


_RANK = {ExecutionStatus.REQUESTED: 0, ExecutionStatus.QUEUED: 1, ExecutionStatus.RUNNING: 2}


class Stored(BaseModel):
    # Extra fields are ignored so that a newer writer's documents stay readable.
    model_config = ConfigDict(frozen=True, extra="ignore")


class ExecutionResult(Stored):
    status: TerminalStatus
    event_id: str
    event_source: str
    event_type: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: StreamOutput | None = None
    stderr: StreamOutput | None = None
    usage: ResourceUsage | None = None
    error_type: FailureType | None = None
    code: str | None = None
    message: str | None = None
    timeout_seconds: float | None = None


class LateResult(Stored):
    status: TerminalStatus
    event_id: str
    event_source: str
    event_type: str
    received_at: datetime


class ExecutionDocument(Stored):
    execution_id: str
    status: ExecutionStatus
    updated_at: datetime
    version: int = 0
    user_id: str | None = None
    priority: Priority | None = None
    language: str | None = None
    language_version: str | None = None
    submitted_at: datetime | None = None
    queue_position: int | None = None
    limits: Limits | None = None
    accepted_at: datetime | None = None
    started_at: datetime | None = None
    pod_name: str | None = None
    finished_at: datetime | None = None
    result: ExecutionResult | None = None
    late_results: tuple[LateResult, ...] = ()
    late_results_dropped: int = 0

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"execution_id", "version"}) | {
            # Dates stay BSON dates so that they can be queried and sorted.
            name: getattr(self, name)
            for name in _DATES
            if getattr(self, name) is not None
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ExecutionDocument:
        return cls.model_validate({**document, "execution_id": document["_id"]})


_DATES = ("updated_at", "submitted_at", "accepted_at", "started_at", "finished_at")


@dataclass(frozen=True)
class Projection:
    document: ExecutionDocument | None
    emitted: tuple[Payload, ...] = ()
    changed: bool = False


def project(document: ExecutionDocument | None, event: IncomingEvent, now: datetime) -> Projection:
    """Apply ``event`` to the execution's ``document`` (None if there is none yet)."""
    payload = event.payload
    execution_id = getattr(payload, "execution_id", None)
    if not isinstance(execution_id, str):
        return Projection(document)
    current = document or ExecutionDocument(
        execution_id=execution_id, status=ExecutionStatus.REQUESTED, updated_at=now
    )
    if _is_terminal(payload):
        updated, emitted = _terminal(current, event, now)
    else:
        updated, emitted = _lifecycle(current, payload, event.time or now), ()
    if updated == current and document is not None:
        return Projection(document, emitted)
    return Projection(updated.model_copy(update={"updated_at": now}), emitted, changed=True)


def _lifecycle(document: ExecutionDocument, payload: Payload, at: datetime) -> ExecutionDocument:
    facts: dict[str, Any] = {}
    status = document.status
    if isinstance(payload, ExecutionRequested):
        facts = {
            "user_id": payload.user_id,
            "priority": payload.priority,
            "language": payload.spec.language,
            "language_version": payload.spec.version,
            "submitted_at": payload.submitted_at,
        }
    elif isinstance(payload, ExecutionQueued):
        status = ExecutionStatus.QUEUED
        facts = {"user_id": payload.user_id, "priority": payload.priority}
        if document.status.rank <= status.rank:
            facts["queue_position"] = payload.position
    elif isinstance(payload, ExecutionAccepted):
        status = ExecutionStatus.RUNNING
        facts = {
            "user_id": payload.user_id,
            "priority": payload.priority,
            "language": payload.spec.language,
            "language_version": payload.spec.version,
            "limits": payload.limits,
            "accepted_at": at,
        }
    elif isinstance(payload, PodRunning):
        status = ExecutionStatus.RUNNING
        facts = {"pod_name": payload.pod_name, "started_at": payload.started_at or at}
    # First writer wins for facts too, so a redelivery or a stale event never rewrites them.
    missing = {name: value for name, value in facts.items() if getattr(document, name) is None}
    if "queue_position" in facts:
        missing["queue_position"] = facts["queue_position"]
    if status.rank > document.status.rank:
        missing["status"] = status
    return document.model_copy(update=missing) if missing else document


def _terminal(
    document: ExecutionDocument, event: IncomingEvent, now: datetime
) -> tuple[ExecutionDocument, tuple[Payload, ...]]:
    result = _result(event)
    winner = document.result
    if winner is None:
        facts: dict[str, Any] = {"status": ExecutionStatus(result.status.value)}
        facts["finished_at"] = event.time or now
        started_at = getattr(event.payload, "started_at", None)
        if document.started_at is None and started_at is not None:
            facts["started_at"] = started_at
        if isinstance(event.payload, ExecutionRejected) and document.user_id is None:
            facts["user_id"] = event.payload.user_id
        finished = document.model_copy(update={**facts, "result": result})
        return finished, _announce(finished.execution_id, result)
    if (winner.event_source, winner.event_id) == (event.source, event.id):
        return document, _announce(document.execution_id, winner)
    if any(
        (late.event_source, late.event_id) == (event.source, event.id)
        for late in document.late_results
    ):
        return document, ()
    if len(document.late_results) >= LATE_RESULTS_LIMIT:
        return document.model_copy(
            update={"late_results_dropped": document.late_results_dropped + 1}
        ), ()
    late = LateResult(
        status=result.status,
        event_id=event.id,
        event_source=event.source,
        event_type=event.type,
        received_at=now,
    )
    return document.model_copy(update={"late_results": (*document.late_results, late)}), ()


def _announce(execution_id: str, result: ExecutionResult) -> tuple[Payload, ...]:
    stored = ResultStored(execution_id=execution_id, status=result.status)
    if result.status is TerminalStatus.REJECTED:
        return (stored,)
    reason = f"cleanup after {result.status.value}"
    # Emitted one after the other: what the client waits for first, the clean-up after it.
    return (stored, PodDeleteRequested(execution_id=execution_id, reason=reason))


def _result(event: IncomingEvent) -> ExecutionResult:
    payload = event.payload
    origin: dict[str, Any] = {
        "event_id": event.id,
        "event_source": event.source,
        "event_type": event.type,
    }
    if isinstance(payload, ExecutionCompleted):
        return ExecutionResult(
            status=TerminalStatus.COMPLETED,
            exit_code=payload.exit_code,
            signal=payload.signal,
            stdout=payload.stdout,
            stderr=payload.stderr,
            usage=payload.usage,
            **origin,
        )
    if isinstance(payload, ExecutionFailed):
        return ExecutionResult(
            status=TerminalStatus.FAILED,
            error_type=payload.error_type,
            message=payload.message,
            stdout=payload.stdout,
            stderr=payload.stderr,
            usage=payload.usage,
            **origin,
        )
    if isinstance(payload, ExecutionTimedOut):
        return ExecutionResult(
            status=TerminalStatus.TIMED_OUT,
            timeout_seconds=payload.timeout_seconds,
            stdout=payload.stdout,
            stderr=payload.stderr,
            usage=payload.usage,
            **origin,
        )
    if isinstance(payload, ExecutionCancelled):
        return ExecutionResult(status=TerminalStatus.CANCELLED, message=payload.reason, **origin)
    if isinstance(payload, ExecutionRejected):
        return ExecutionResult(
            status=TerminalStatus.REJECTED, code=payload.code, message=payload.reason, **origin
        )
    raise TypeError(f"not a terminal event: {event.type}")


def _is_terminal(payload: Payload) -> bool:
    return isinstance(
        payload,
        ExecutionCompleted
        | ExecutionFailed
        | ExecutionTimedOut
        | ExecutionCancelled
        | ExecutionRejected,
    )
