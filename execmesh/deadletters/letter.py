"""A dead letter: the original CloudEvent, where it was going, why it failed, what we did."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

ERROR_DEST = "knativeerrordest"
ERROR_CODE = "knativeerrorcode"
ERROR_DATA = "knativeerrordata"
ERROR_EXTENSIONS = frozenset({ERROR_DEST, ERROR_CODE, ERROR_DATA})


class State(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    PARKED = "parked"
    DISCARDED = "discarded"


@dataclass(frozen=True)
class DeadLetter:
    id: str
    attributes: Mapping[str, str]
    data: Any
    destination: str
    error_code: int | None
    error_data: str
    created_at: datetime
    next_attempt_at: datetime
    state: State = State.PENDING
    attempts: int = 0
    last_error: str = ""
    history: tuple[Mapping[str, Any], ...] = field(default=())
    # While a retry is in flight: until when its claimer holds it.
    lease_until: datetime | None = None
    # The stored version this letter was read at: a save from a stale read is refused.
    version: int = 0

    @property
    def event_type(self) -> str:
        return self.attributes["type"]

    @property
    def event_id(self) -> str:
        return self.attributes["id"]


def dead_letter_id(source: str, event_id: str, destination: str) -> str:
    """One dead letter per original event and destination, however often it is dead-lettered."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}\n{event_id}\n{destination}"))


def from_cloud_event(attributes: Mapping[str, Any], data: Any, now: datetime) -> DeadLetter:
    """Split the broker's error extensions from the original event's own attributes."""
    original = {k: str(v) for k, v in attributes.items() if k not in ERROR_EXTENSIONS}
    destination = str(attributes.get(ERROR_DEST, ""))
    return DeadLetter(
        id=dead_letter_id(original["source"], original["id"], destination),
        attributes=original,
        data=data,
        destination=destination,
        error_code=_int_or_none(attributes.get(ERROR_CODE)),
        error_data=decode_error_data(attributes.get(ERROR_DATA)),
        created_at=now,
        next_attempt_at=now,
    )


def decode_error_data(value: object) -> str:
    if not value:
        return ""
    try:
        return base64.b64decode(str(value), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return str(value)


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
