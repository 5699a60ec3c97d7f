"""What the dlq function does with each event: keep a dead letter, or retry on the tick."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx

from execmesh.deadletters.letter import ERROR_DEST, DeadLetter, State, from_cloud_event
from execmesh.deadletters.policy import RetryPolicy, policy_for, scaled_policies
from execmesh.deadletters.retrier import Attempt, first_attempt_at, redeliver, retry_due
from execmesh.deadletters.store import DeadLetterStore
from execmesh.events import DlqParked, PingTick
from execmesh.mesh import Emission, IncomingEvent
from execmesh.mongo import connect
from execmesh.settings import Settings

# A retry round runs inside one delivery of the tick: keep it well under the broker's timeout.
REDELIVERY_TIMEOUT_SECONDS = 5.0
BATCH = 20
# A round ends in time for the tick's delivery (timeout 30 s) to be answered: a tick retried
# for its slowness would run a second round beside the first.
ROUND = timedelta(seconds=15)


@dataclass
class DeadLetterOffice:
    store: DeadLetterStore
    deliver: Callable[[DeadLetter], Attempt]
    policy_for: Callable[[str], RetryPolicy] = policy_for
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetterOffice:
        store = DeadLetterStore(connect(settings))
        store.ensure_indexes()
        client = httpx.Client(timeout=REDELIVERY_TIMEOUT_SECONDS)
        return cls(store, partial(redeliver, client), scaled_policies(settings.dlq_delay_scale))

    def handle(self, event: IncomingEvent) -> list[Emission]:
        if event.type == PingTick.TYPE and ERROR_DEST not in event.extensions:
            return self.retry_due()
        return self.keep(event)

    def keep(self, event: IncomingEvent) -> list[Emission]:
        letter = from_cloud_event(attributes_of(event), event.data, self.clock())
        first = first_attempt_at(letter, self.policy_for(letter.event_type), self.rng)
        if first is None:
            parked = replace(letter, state=State.PARKED, last_error=describe_error(letter))
            self.store.add(parked)
            return [parked_event(parked)]
        self.store.add(replace(letter, next_attempt_at=first))
        return []

    def retry_due(self) -> list[Emission]:
        now = self.clock()
        parked = retry_due(
            self.store,
            self.deliver,
            self.policy_for,
            now=now,
            rng=self.rng,
            limit=BATCH,
            time_left=lambda: self.clock() - now < ROUND,
        )
        return [parked_event(letter) for letter in parked]


def attributes_of(event: IncomingEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "datacontenttype": "text/plain" if isinstance(event.data, str) else "application/json",
        **event.extensions,
    }
    if event.subject is not None:
        attributes["subject"] = event.subject
    if event.time is not None:
        attributes["time"] = event.time.isoformat()
    return attributes


def describe_error(letter: DeadLetter) -> str:
    return f"HTTP {letter.error_code}: {letter.error_data}"[:4096]


def parked_event(letter: DeadLetter) -> Emission:
    payload = DlqParked(
        dead_letter_id=letter.id,
        original_id=letter.event_id,
        original_type=letter.event_type,
        destination=letter.destination,
        attempts=letter.attempts + (0 if letter.state is State.PARKED else 1),
        last_error=(letter.last_error or describe_error(letter))[:4096],
    )
    return Emission(payload, subject=letter.attributes.get("subject"), discriminator=letter.id)
