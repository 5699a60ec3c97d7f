"""A trigger's delivery policy: how often and how patiently the broker retries.

Field by field, the trigger's `delivery` wins over the broker's; what neither sets takes the
Knative Kafka broker's defaults (no retry, exponential backoff of 1 s). Retry k (1-based)
waits `backoffDelay * 2^k` (exponential) or `backoffDelay * k` (linear).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from execmesh.broker.resolve import Destination, parse_destination

BackoffPolicy = Literal["exponential", "linear"]

DEFAULT_BACKOFF_DELAY = 1.0
# Knative leaves the per-attempt timeout open; a local mesh should not hold a lane for ever.
DEFAULT_TIMEOUT = 60.0

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_UNIT_SECONDS = {"days": 86400.0, "hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


class DeliverySyntaxError(ValueError):
    """A delivery block Knative would refuse."""


@dataclass(frozen=True)
class DeliverySpec:
    """A `delivery` block as written: None where it says nothing."""

    retry: int | None = None
    backoff_policy: BackoffPolicy | None = None
    backoff_delay: float | None = None
    timeout: float | None = None
    dead_letter_sink: Destination | None = None


@dataclass(frozen=True)
class Delivery:
    """The effective policy of one trigger."""

    retry: int = 0
    backoff_policy: BackoffPolicy = "exponential"
    backoff_delay: float = DEFAULT_BACKOFF_DELAY
    timeout: float = DEFAULT_TIMEOUT
    dead_letter_sink: Destination | None = None


def parse_duration(text: Any) -> float:
    """Seconds in an ISO-8601 duration such as `PT0.5S`, `PT1M30S` or `P1DT2H`."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise DeliverySyntaxError(f"{text!r} is not an ISO-8601 duration (e.g. PT0.5S)")
    return sum(float(v) * _UNIT_SECONDS[k] for k, v in match.groupdict().items() if v)


def parse_delivery(raw: Any, where: str) -> DeliverySpec:
    if raw is None:
        return DeliverySpec()
    if not isinstance(raw, dict):
        raise DeliverySyntaxError(f"{where}: must be a mapping")
    known = {"retry", "backoffPolicy", "backoffDelay", "timeout", "deadLetterSink"}
    # Knative fields the local broker does not act on are accepted, not silently invented.
    accepted = known | {"retryAfterMax", "format"}
    unknown = sorted(set(raw) - accepted)
    if unknown:
        raise DeliverySyntaxError(f"{where}: unknown field(s) {', '.join(unknown)}")
    retry = raw.get("retry")
    if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
        raise DeliverySyntaxError(f"{where}.retry: must be a non-negative integer")
    policy = raw.get("backoffPolicy")
    if policy is not None and policy not in ("exponential", "linear"):
        raise DeliverySyntaxError(f"{where}.backoffPolicy: must be exponential or linear")
    sink = raw.get("deadLetterSink")
    try:
        return DeliverySpec(
            retry=retry,
            backoff_policy=policy,
            backoff_delay=_optional_duration(raw, "backoffDelay", where),
            timeout=_positive(_optional_duration(raw, "timeout", where), f"{where}.timeout"),
            dead_letter_sink=(
                None if sink is None else parse_destination(sink, f"{where}.deadLetterSink")
            ),
        )
    except ValueError as error:
        raise DeliverySyntaxError(str(error)) from error


def _positive(seconds: float | None, where: str) -> float | None:
    # An HTTP client takes a zero timeout as none at all: one hung subscriber would hold its
    # lane, and the partition's commits, for ever.
    if seconds is not None and seconds <= 0:
        raise DeliverySyntaxError(f"{where}: must be longer than zero")
    return seconds


def _optional_duration(raw: dict[str, Any], field: str, where: str) -> float | None:
    if raw.get(field) is None:
        return None
    try:
        return parse_duration(raw[field])
    except DeliverySyntaxError as error:
        raise DeliverySyntaxError(f"{where}.{field}: {error}") from None


def merge(trigger: DeliverySpec, broker: DeliverySpec) -> Delivery:
    defaults = Delivery()

    def pick(name: str) -> Any:
        value = getattr(trigger, name)
        if value is None:
            value = getattr(broker, name)
        return getattr(defaults, name) if value is None else value

    return Delivery(
        retry=pick("retry"),
        backoff_policy=pick("backoff_policy"),
        backoff_delay=pick("backoff_delay"),
        timeout=pick("timeout"),
        dead_letter_sink=pick("dead_letter_sink"),
    )


def backoff(delivery: Delivery, retry_number: int) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first retry)."""
    if delivery.backoff_policy == "linear":
        return delivery.backoff_delay * retry_number
    return delivery.backoff_delay * 2.0**retry_number


def is_retriable(status: int) -> bool:
    return status >= 500 or status in (404, 408, 409, 429)
