"""Runs the saga machine against a store: read, advance, save if unchanged since read, retry.

What the handler emits is what the machine returned for the event, so a redelivered event
re-emits the same events (their ids derive from the input id, consumers deduplicate).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from execmesh.errors import TransientError
from execmesh.events import Payload
from execmesh.saga.machine import DeadlineCheck, Message, Policy, Saga, advance
from execmesh.saga.store import SagaStore
from execmesh.settings import Settings
from execmesh.versioned import VersionConflict

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20


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
    *,
    attempts: int = MAX_ATTEMPTS,
) -> tuple[Payload, ...]:
    """Apply one event to the saga of ``execution_id``; returns the events to emit."""
    for attempt in range(attempts):
        step = advance(store.get(execution_id), key, message, now, policy)
        if not step.changed or step.saga is None:
            return step.emitted
        try:
            store.save(step.saga)
        except VersionConflict:
            logger.debug("saga %s changed under us (attempt %d)", execution_id, attempt + 1)
            # Jitter so that two contenders do not collide again in lockstep.
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            continue
        return step.emitted
    raise TransientError(f"saga {execution_id}: still conflicting after {attempts} attempts")


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
