"""Retry policies per event category, and the backoff they give. Pure."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from execmesh.sources.ping import PING_TYPE


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_delay: timedelta
    max_delay: timedelta
    jitter: float = 0.2

    def delay_before(self, attempt: int, rng: random.Random) -> timedelta | None:
        """The wait before retry number ``attempt`` (1-based); ``None`` once exhausted."""
        if attempt > self.max_attempts:
            return None
        if self.base_delay <= timedelta(0):
            return timedelta(0)
        exponential = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        spread = exponential.total_seconds() * self.jitter
        return timedelta(
            seconds=max(0.0, exponential.total_seconds() + rng.uniform(-spread, spread))
        )

    def scaled(self, factor: float) -> RetryPolicy:
        return replace(self, base_delay=self.base_delay * factor, max_delay=self.max_delay * factor)


IMMEDIATE = RetryPolicy(max_attempts=3, base_delay=timedelta(0), max_delay=timedelta(0), jitter=0)
NEVER = RetryPolicy(max_attempts=0, base_delay=timedelta(0), max_delay=timedelta(0), jitter=0)

# A lost execution event leaves a user waiting: try hard. Pod cleanup is idempotent and cheap:
# retry at once. A clock tick is worthless once late: keep it for the record, never replay it.
POLICIES: tuple[tuple[str, RetryPolicy], ...] = (
    (PING_TYPE, NEVER),
    ("io.execmesh.pod.delete_requested", IMMEDIATE),
    (
        "io.execmesh.execution.",
        RetryPolicy(
            max_attempts=8, base_delay=timedelta(seconds=2), max_delay=timedelta(minutes=5)
        ),
    ),
    (
        "io.execmesh.pod.",
        RetryPolicy(
            max_attempts=6, base_delay=timedelta(seconds=2), max_delay=timedelta(minutes=2)
        ),
    ),
)
DEFAULT_POLICY = RetryPolicy(
    max_attempts=5, base_delay=timedelta(seconds=5), max_delay=timedelta(minutes=10)
)


def policy_for(event_type: str) -> RetryPolicy:
    for prefix, policy in POLICIES:
        if event_type.startswith(prefix):
            return policy
    return DEFAULT_POLICY


def scaled_policies(factor: float) -> Callable[[str], RetryPolicy]:
    """``policy_for`` with every delay multiplied by ``factor`` (1 in production)."""
    if factor == 1:
        return policy_for
    return lambda event_type: policy_for(event_type).scaled(factor)
