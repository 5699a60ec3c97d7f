"""Retrying dead letters: to their original destination, with their original id."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from execmesh.deadletters.letter import DeadLetter, State
from execmesh.deadletters.policy import RetryPolicy
from execmesh.deadletters.store import DeadLetterStore

log = logging.getLogger(__name__)

# A letter is claimed just before its one delivery: a dlq instance that died holding it
# delays its retry by this much, while a live one never takes longer than its timeout.
CLAIM_LEASE = timedelta(seconds=15)


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    outcome: str


def redeliver(client: httpx.Client, letter: DeadLetter) -> Attempt:
    """POST the original event in binary mode; a 2xx is a delivery, whatever its body."""
    headers = {f"ce-{name}": value for name, value in letter.attributes.items()}
    headers.pop("ce-datacontenttype", None)
    headers["content-type"] = letter.attributes.get("datacontenttype", "application/json")
    body = letter.data if isinstance(letter.data, str) else json.dumps(letter.data)
    try:
        response = client.post(letter.destination, headers=headers, content=body.encode())
    except httpx.HTTPError as error:
        return Attempt(False, f"{type(error).__name__}: {error}")
    if 200 <= response.status_code < 300:
        return Attempt(True, f"delivered ({response.status_code})")
    return Attempt(False, f"HTTP {response.status_code}: {response.text[:300]}")


def retry_due(
    store: DeadLetterStore,
    deliver: Callable[[DeadLetter], Attempt],
    policy_for: Callable[[str], RetryPolicy],
    *,
    now: datetime,
    rng: random.Random,
    limit: int = 50,
    time_left: Callable[[], bool] = lambda: True,
) -> list[DeadLetter]:
    """Retry up to ``limit`` letters due now, claiming none once ``time_left()`` says no;
    the ones parked by this round are returned."""
    parked: list[DeadLetter] = []
    for _ in range(limit):
        if not time_left():
            break
        letter = store.claim_next(now, CLAIM_LEASE)
        if letter is None:
            break
        attempt = deliver(letter)
        if attempt.delivered:
            store.settle(letter, state=State.DELIVERED, outcome=attempt.outcome, now=now)
            continue
        delay = policy_for(letter.event_type).delay_before(letter.attempts + 2, rng)
        if delay is None:
            if store.settle(letter, state=State.PARKED, outcome=attempt.outcome, now=now):
                parked.append(letter)
            continue
        store.settle(
            letter,
            state=State.PENDING,
            outcome=attempt.outcome,
            now=now,
            next_attempt_at=now + delay,
        )
    return parked


def first_attempt_at(
    letter: DeadLetter, policy: RetryPolicy, rng: random.Random
) -> datetime | None:
    """When a fresh dead letter gets its first retry; ``None`` if its policy allows none."""
    delay = policy.delay_before(1, rng)
    return None if delay is None else letter.created_at + delay
