"""Runs the saga machine against a store: read, advance, save if unchanged since read, retry.

What the handler emits is what the machine returned for the event, so a redelivered event
re-emits the same events (their ids derive from the input id, consumers deduplicate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from execmesh.events import Payload
from execmesh.saga.machine import DeadlineCheck, Message, Policy, Saga, advance
from execmesh.saga.store import SagaStore
from execmesh.settings import Settings
from execmesh.versioned import retry_on_conflict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SagaConfig:
    policy: Policy
    batch_size: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> SagaConfig:
        policy = Policy(
            grace=timedelta(seconds=settings.saga_grace_seconds),
            retention=timedelta(seconds=settings.saga_retention_seconds),
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

    def attempt() -> tuple[Payload, ...]:
        step = advance(store.get(execution_id), key, message, now, policy)
        if step.changed and step.saga is not None:
            store.save(step.saga)
        return step.emitted

    return retry_on_conflict(attempt, f"saga {execution_id}")


def check_deadlines(
    store: SagaStore, key: str, now: datetime, config: SagaConfig
) -> tuple[Payload, ...]:
    """On the tick ``key``: end the sagas past their deadline (one bounded batch), purge old ones.

    Sagas that already applied this tick are included, so a redelivered tick re-emits what
    the first delivery emitted even though those sagas are no longer due.
    """
    candidates: dict[str, Saga] = {}
    for saga in [*store.remembering(key, config.batch_size), *store.due(now, config.batch_size)]:
        candidates.setdefault(saga.execution_id, saga)
    emitted: list[Payload] = []
    for execution_id in candidates:
        emitted.extend(apply_event(store, execution_id, key, DeadlineCheck(), now, config.policy))
    purged = store.purge(now, config.batch_size)
    if candidates or purged:
        logger.info("deadline check: %d due, %d purged", len(candidates), purged)
    return tuple(emitted)
