"""The admission state: who runs, who waits, and what each input event did to it.

A port with two implementations that pass one contract suite: ``InMemoryAdmissionStore``
here (real code, for tests and single-process tools) and ``RedisAdmissionStore`` (Lua
scripts, shared by every coordinator replica).

Every operation takes a ``cause`` (the key of the input event) and records its ``Outcome``
in the same atomic step: a retry of that input returns the recorded outcome instead of
acting again, so acceptances announced once are announced again, never lost nor replaced by
others. Times are integer milliseconds since the epoch.

The queue is ordered by priority, then arrival. Admission walks it from the head: an
execution whose user is at their limit is passed over (one busy user never blocks the
others); one that does not fit the cpu/memory budget stops the walk, so a large job is not
overtaken forever by small ones behind it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from execmesh.events import Priority
from execmesh.settings import Settings

State = Literal["queued", "running", "done", "unknown"]

PRIORITY_RANK: Mapping[Priority, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
DEFAULT_RECORD_TTL_MS = 24 * 3600 * 1000
# How far down the queue one admission pass looks for a user below their limit.
SCAN_LIMIT = 1000


@dataclass(frozen=True)
class Capacity:
    max_per_user: int = 5
    max_global: int = 10
    cpu_millis: int = 10_000
    memory_mb: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> Capacity:
        return cls(
            max_per_user=settings.max_per_user,
            max_global=settings.max_global,
            cpu_millis=settings.cpu_budget_millis,
            memory_mb=settings.memory_budget_mb,
        )


@dataclass(frozen=True)
class Ticket:
    """One execution asking for a slot; ``body`` is opaque and handed back on admission."""

    execution_id: str
    user_id: str
    priority: Priority
    cpu_millis: int
    memory_mb: int
    lease_ms: int
    body: str


@dataclass(frozen=True)
class Admission:
    execution_id: str
    lease_expires_ms: int
    body: str


@dataclass(frozen=True)
class Outcome:
    """What one operation did. ``state`` and ``position`` describe its target execution."""

    state: State = "unknown"
    position: int | None = None
    admitted: tuple[Admission, ...] = ()
    released: bool = False
    cancelled: bool = False
    expired: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    running: int
    queued: int
    per_user: Mapping[str, int]
    cpu_millis: int
    memory_mb: int


class AdmissionStore(Protocol):
    def submit(self, ticket: Ticket, cause: str, now_ms: int) -> Outcome:
        """Queue the execution and admit what fits; a known execution is only described."""

    def release(self, execution_id: str, cause: str, now_ms: int) -> Outcome:
        """End the execution (free its slot or leave the queue), then admit what fits."""

    def cancel(self, execution_id: str, cause: str, now_ms: int) -> Outcome:
        """Remove the execution if it is queued (``cancelled``); a running one is left alone."""

    def expire(self, cause: str, now_ms: int) -> Outcome:
        """Free the slots whose lease has expired, then admit what fits."""

    def position(self, execution_id: str) -> int | None:
        """How many executions are ahead of this one in the queue; None if it is not queued."""

    def usage(self) -> Usage: ...


@dataclass
class _Execution:
    ticket: Ticket
    seq: int
    state: State = "queued"
    expires_ms: int = 0
    forget_at_ms: int | None = None


@dataclass
class _Memory:
    executions: dict[str, _Execution] = field(default_factory=dict)
    queue: list[tuple[int, int, str]] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    per_user: dict[str, int] = field(default_factory=dict)
    cpu: int = 0
    memory: int = 0
    seq: int = 0
    causes: dict[str, tuple[int, Outcome]] = field(default_factory=dict)


class InMemoryAdmissionStore:
    def __init__(self, capacity: Capacity, *, record_ttl_ms: int = DEFAULT_RECORD_TTL_MS) -> None:
        self.capacity = capacity
        self.record_ttl_ms = record_ttl_ms
        self._m = _Memory()
        self._lock = threading.Lock()

    def submit(self, ticket: Ticket, cause: str, now_ms: int) -> Outcome:
        with self._lock:
            return self._once(cause, now_ms, lambda: self._submit(ticket, now_ms))

    def release(self, execution_id: str, cause: str, now_ms: int) -> Outcome:
        with self._lock:
            return self._once(cause, now_ms, lambda: self._release(execution_id, now_ms))

    def cancel(self, execution_id: str, cause: str, now_ms: int) -> Outcome:
        with self._lock:
            return self._once(cause, now_ms, lambda: self._cancel(execution_id, now_ms))

    def expire(self, cause: str, now_ms: int) -> Outcome:
        with self._lock:
            return self._once(cause, now_ms, lambda: self._expire(now_ms))

    def position(self, execution_id: str) -> int | None:
        with self._lock:
            execution = self._m.executions.get(execution_id)
            if execution is None or execution.state != "queued":
                return None
            return self._m.queue.index(self._queue_entry(execution))

    def usage(self) -> Usage:
        with self._lock:
            m = self._m
            return Usage(len(m.running), len(m.queue), dict(m.per_user), m.cpu, m.memory)

    def _once(self, cause: str, now_ms: int, operation: _Operation) -> Outcome:
        self._forget_old(now_ms)
        recorded = self._m.causes.get(cause)
        if recorded is not None:
            return recorded[1]
        outcome = operation()
        self._m.causes[cause] = (now_ms + self.record_ttl_ms, outcome)
        return outcome

    def _submit(self, ticket: Ticket, now_ms: int) -> Outcome:
        m = self._m
        admitted: tuple[Admission, ...] = ()
        if ticket.execution_id not in m.executions:
            m.seq += 1
            execution = _Execution(ticket, m.seq)
            m.executions[ticket.execution_id] = execution
            bisect.insort(m.queue, self._queue_entry(execution))
            admitted = self._admit(now_ms)
        execution = m.executions[ticket.execution_id]
        outcome = Outcome(state=execution.state, admitted=admitted)
        if execution.state == "queued":
            return replace(outcome, position=m.queue.index(self._queue_entry(execution)))
        if execution.state == "running" and all(
            a.execution_id != ticket.execution_id for a in admitted
        ):
            again = Admission(ticket.execution_id, execution.expires_ms, execution.ticket.body)
            return replace(outcome, admitted=(*admitted, again))
        return outcome

    def _release(self, execution_id: str, now_ms: int) -> Outcome:
        before = self._end(execution_id, now_ms)
        return Outcome(state="done", released=before == "running", admitted=self._admit(now_ms))

    def _cancel(self, execution_id: str, now_ms: int) -> Outcome:
        execution = self._m.executions.get(execution_id)
        if execution is None or execution.state != "queued":
            return Outcome(state="unknown" if execution is None else execution.state)
        self._end(execution_id, now_ms)
        return Outcome(state="done", cancelled=True, admitted=self._admit(now_ms))

    def _expire(self, now_ms: int) -> Outcome:
        lapsed = sorted(
            (expires, id) for id, expires in self._m.running.items() if expires <= now_ms
        )
        for _, execution_id in lapsed:
            self._end(execution_id, now_ms)
        return Outcome(expired=tuple(id for _, id in lapsed), admitted=self._admit(now_ms))

    def _end(self, execution_id: str, now_ms: int) -> State:
        m = self._m
        execution = m.executions.get(execution_id)
        if execution is None:
            # A tombstone: an execution ended before it was submitted is never admitted.
            placeholder = Ticket(execution_id, "", Priority.NORMAL, 0, 0, 0, "")
            execution = m.executions[execution_id] = _Execution(placeholder, 0, state="unknown")
        before = execution.state
        if before == "running":
            ticket = execution.ticket
            del m.running[execution_id]
            m.per_user[ticket.user_id] -= 1
            if m.per_user[ticket.user_id] <= 0:
                del m.per_user[ticket.user_id]
            m.cpu -= ticket.cpu_millis
            m.memory -= ticket.memory_mb
        elif before == "queued":
            m.queue.remove(self._queue_entry(execution))
        execution.state = "done"
        execution.forget_at_ms = now_ms + self.record_ttl_ms
        return before

    def _admit(self, now_ms: int) -> tuple[Admission, ...]:
        m, capacity = self._m, self.capacity
        admitted: list[Admission] = []
        cursor = scanned = 0
        while len(m.running) < capacity.max_global and cursor < len(m.queue):
            if scanned >= SCAN_LIMIT:
                break
            scanned += 1
            execution = m.executions[m.queue[cursor][2]]
            ticket = execution.ticket
            if m.per_user.get(ticket.user_id, 0) >= capacity.max_per_user:
                cursor += 1
                continue
            if (
                m.cpu + ticket.cpu_millis > capacity.cpu_millis
                or m.memory + ticket.memory_mb > capacity.memory_mb
            ):
                break
            del m.queue[cursor]
            execution.state = "running"
            execution.expires_ms = now_ms + ticket.lease_ms
            m.running[ticket.execution_id] = execution.expires_ms
            m.per_user[ticket.user_id] = m.per_user.get(ticket.user_id, 0) + 1
            m.cpu += ticket.cpu_millis
            m.memory += ticket.memory_mb
            admitted.append(Admission(ticket.execution_id, execution.expires_ms, ticket.body))
        return tuple(admitted)

    def _forget_old(self, now_ms: int) -> None:
        m = self._m
        for cause in [c for c, (until, _) in m.causes.items() if until <= now_ms]:
            del m.causes[cause]
        for id in [
            id
            for id, e in m.executions.items()
            if e.forget_at_ms is not None and e.forget_at_ms <= now_ms
        ]:
            del m.executions[id]

    @staticmethod
    def _queue_entry(execution: _Execution) -> tuple[int, int, str]:
        rank = PRIORITY_RANK[execution.ticket.priority]
        return (rank, execution.seq, execution.ticket.execution_id)


class _Operation(Protocol):
    def __call__(self) -> Outcome: ...
