"""The coordinator's decisions: one input event in, the admission events it causes out.

The store does the state changes atomically and remembers, per input event, what it did;
this module turns a request into a ticket and an outcome into events. The ids of the events
one input causes derive from that input and each execution id, so a retry of the input
re-emits the same ids and consumers deduplicate them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

from execmesh.admission.limits import Rejection, RuntimeResolver, ServerLimits, check_request
from execmesh.admission.redis_store import RedisAdmissionStore
from execmesh.admission.store import AdmissionStore, Capacity, Outcome, Ticket
from execmesh.errors import ConfigError
from execmesh.events import (
    TERMINAL_EXECUTION_TYPES,
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCancelRequested,
    ExecutionPayload,
    ExecutionQueued,
    ExecutionRejected,
    ExecutionRequested,
    Limits,
    PingTick,
)
from execmesh.mesh import Emission, IncomingEvent
from execmesh.pods import runtimes
from execmesh.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coordinator:
    store: AdmissionStore
    server: ServerLimits
    resolve: RuntimeResolver
    lease_seconds: float
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings: Settings) -> Coordinator:
        backend = _backend(settings.pod_backend)
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2.0)
        return cls(
            store=RedisAdmissionStore(client, Capacity.from_settings(settings)),
            server=ServerLimits.from_settings(settings),
            resolve=lambda language, version: runtimes.resolve(language, version, backend),
            # The saga ends any run by its start-up budget, then timeout + grace, and its
            # terminal event frees the slot: the lease only frees the slots of runs the saga
            # lost too, so it must outlast both budgets or the limits could be overrun.
            lease_seconds=(
                settings.saga_startup_seconds + settings.saga_grace_seconds + settings.lease_seconds
            ),
        )

    def handle(self, event: IncomingEvent) -> list[Emission]:
        payload = event.payload
        if isinstance(payload, ExecutionRequested):
            return self.on_requested(payload, event.key)
        if isinstance(payload, ExecutionCancelRequested):
            return self.on_cancel_requested(payload, event.key)
        if isinstance(payload, ExecutionPayload) and event.type in TERMINAL_EXECUTION_TYPES:
            return self.on_terminal(payload.execution_id, event.key)
        if isinstance(payload, PingTick):
            return self.on_ping(event.key)
        logger.info("coordinator: ignoring %s %s", event.type, event.id)
        return []

    def on_requested(self, request: ExecutionRequested, cause: str) -> list[Emission]:
        checked = check_request(request, self.server, self.resolve)
        if isinstance(checked, Rejection):
            logger.info("rejected %s: %s", request.execution_id, checked.reason)
            rejected = ExecutionRejected(
                execution_id=request.execution_id,
                user_id=request.user_id,
                code=checked.code,
                reason=checked.reason,
            )
            return [_emission(rejected)]
        accepted = _Accepted(
            user_id=request.user_id,
            spec=checked.spec.model_dump(mode="json"),
            limits=checked.limits.model_dump(mode="json"),
            priority=request.priority.value,
        )
        ticket = Ticket(
            execution_id=request.execution_id,
            user_id=request.user_id,
            priority=request.priority,
            cpu_millis=checked.limits.cpu_millis,
            memory_mb=checked.limits.memory_mb,
            lease_ms=_lease_ms(checked.limits, self.lease_seconds),
            body=json.dumps(asdict(accepted), separators=(",", ":")),
        )
        outcome = self.store.submit(ticket, cause, self._now_ms())
        emissions = _acceptances(outcome)
        if outcome.state == "queued" and outcome.position is not None:
            queued = ExecutionQueued(
                execution_id=request.execution_id,
                user_id=request.user_id,
                priority=request.priority,
                position=outcome.position,
            )
            emissions.append(_emission(queued))
        return emissions

    def on_terminal(self, execution_id: str, cause: str) -> list[Emission]:
        outcome = self.store.release(execution_id, cause, self._now_ms())
        if outcome.released:
            logger.info("released the slot of %s", execution_id)
        return _acceptances(outcome)

    def on_cancel_requested(self, cancel: ExecutionCancelRequested, cause: str) -> list[Emission]:
        outcome = self.store.cancel(cancel.execution_id, cause, self._now_ms())
        emissions = _acceptances(outcome)
        if outcome.cancelled:
            cancelled = ExecutionCancelled(execution_id=cancel.execution_id, reason=cancel.reason)
            emissions.append(_emission(cancelled))
        return emissions

    def on_ping(self, cause: str) -> list[Emission]:
        outcome = self.store.expire(cause, self._now_ms())
        if outcome.expired:
            logger.warning("leases expired, slots freed: %s", ", ".join(outcome.expired))
        return _acceptances(outcome)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


@dataclass(frozen=True)
class _Accepted:
    """What an acceptance announces besides the id and lease, kept with the queued ticket."""

    user_id: str
    spec: dict[str, object]
    limits: dict[str, object]
    priority: str


def _backend(name: str) -> runtimes.Backend:
    for backend in runtimes.BACKENDS:
        if backend == name:
            return backend
    raise ConfigError(f"EXECMESH_POD_BACKEND={name!r}: choose one of {runtimes.BACKENDS}")


def _lease_ms(limits: Limits, lease_seconds: float) -> int:
    return int((limits.timeout_seconds + lease_seconds) * 1000)


def _acceptances(outcome: Outcome) -> list[Emission]:
    emissions = []
    for admission in outcome.admitted:
        body = json.loads(admission.body)
        accepted = ExecutionAccepted(
            execution_id=admission.execution_id,
            lease_expires_at=datetime.fromtimestamp(admission.lease_expires_ms / 1000, UTC),
            **body,
        )
        emissions.append(_emission(accepted))
    return emissions


def _emission(payload: ExecutionPayload) -> Emission:
    # The subject (the execution id) takes part in the derived event id, so the acceptances
    # one input causes have distinct ids, and the same ones when the input is retried.
    return Emission(payload)
