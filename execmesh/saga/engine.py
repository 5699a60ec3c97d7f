"""Runs the saga machine against a store: read, advance, save if unchanged since read, retry.

What the handler emits is what the machine returned for the event, so a redelivered event
re-emits the same events (their ids derive from the input id, consumers deduplicate).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from execmesh.errors import InvalidEvent
from execmesh.events import ExecutionAccepted, ExecutionPayload, Payload, PingTick
from execmesh.mesh import Emission, IncomingEvent
from execmesh.mongo import connect
from execmesh.saga.machine import DeadlineCheck, Message, Policy, advance
from execmesh.saga.store import MongoSagaStore, SagaStore
from execmesh.settings import Settings
from execmesh.versioned import read_modify_save

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SagaConfig:
    policy: Policy
    batch_size: int = 100
    # Purging scans every retired saga; once in a while is plenty.
    purge_one_tick_in: int = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> SagaConfig:
        policy = Policy(
            grace=timedelta(seconds=settings.saga_grace_seconds),
            retention=timedelta(seconds=settings.saga_retention_seconds),
            startup=timedelta(seconds=settings.saga_startup_seconds),
        )
        return cls(policy=policy, batch_size=settings.saga_batch_size)


def apply_event(
    store: SagaStore,
    execution_id: str,
    key: str,
    message: Message,
    now: datetime,
    policy: Policy,
) -> tuple[Payload, ...]:
    """Apply one event to the saga of ``execution_id``; returns the events to emit."""

    def attempt(read: bool) -> tuple[Payload, ...]:
        step = advance(store.get(execution_id) if read else None, key, message, now, policy)
        if step.changed and step.saga is not None:
            store.save(step.saga)
        return step.emitted

    # An acceptance nearly always starts its saga (a cancel may have come first).
    starts = isinstance(message, ExecutionAccepted)
    return read_modify_save(attempt, f"saga {execution_id}", likely_new=starts)


def check_deadlines(
    store: SagaStore, key: str, now: datetime, config: SagaConfig
) -> tuple[Payload, ...]:
    """On the tick ``key``: end the sagas past their deadline (one bounded batch).

    Which sagas a tick ends is recorded before they are ended, so a redelivered tick re-emits
    exactly what the first delivery emitted, even though those sagas are no longer due. Old
    sagas are purged on one tick in ``purge_one_tick_in``, chosen by the tick's id.
    """
    targets = store.tick_targets(key)
    if targets is None:
        targets = store.due(now, config.batch_size)
        if targets:
            store.record_tick(key, targets, now + config.policy.retention)
    emitted: list[Payload] = []
    for execution_id in targets:
        emitted.extend(apply_event(store, execution_id, key, DeadlineCheck(), now, config.policy))
    purged = 0
    if zlib.crc32(key.encode()) % config.purge_one_tick_in == 0:
        purged = store.purge(now, config.batch_size)
    if targets or purged:
        logger.info("deadline check: %d due, %d purged", len(targets), purged)
    return tuple(emitted)


@dataclass(frozen=True)
class SagaService:
    """What the saga function does with one event: the deadline check or one saga's step."""

    store: SagaStore
    config: SagaConfig
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    def from_settings(cls, settings: Settings) -> SagaService:
        store = MongoSagaStore(connect(settings))
        store.ensure_indexes()
        return cls(store=store, config=SagaConfig.from_settings(settings))

    def handle(self, event: IncomingEvent) -> list[Emission]:
        # The event's own time, so that a redelivery decides exactly as the first delivery did.
        now = _aware(event.time) if event.time is not None else self.clock()
        payload = event.payload
        if isinstance(payload, PingTick):
            emitted = check_deadlines(self.store, event.key, now, self.config)
        elif isinstance(payload, ExecutionPayload):
            emitted = apply_event(
                self.store, payload.execution_id, event.key, payload, now, self.config.policy
            )
        else:
            raise InvalidEvent(f"the saga does not handle {event.type}")
        return [Emission(p) for p in emitted]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
