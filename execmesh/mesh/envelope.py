"""The incoming side of the contract: one HTTP request in, one validated event out."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from cloudevents.exceptions import GenericException
from cloudevents.http import from_http

from execmesh.errors import InvalidEvent
from execmesh.events import Payload, Untyped, parse_payload

P = TypeVar("P", bound=Payload)

CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
PARTITION_KEY = "partitionkey"
# Set by the replay function on what it re-emits; see execmesh/mesh/emission.py for propagation.
REPLAYED_FROM = "replayedfrom"
REPLAY_SESSION = "replaysession"
# Set when a replay session asks the pipeline to act on what it replays again.
REPLAY_REPROCESS = "replayreprocess"


@dataclass(frozen=True)
class IncomingEvent:
    """A CloudEvent that passed the contract: known type, valid payload, known version."""

    id: str
    type: str
    source: str
    payload: Payload
    subject: str | None = None
    time: datetime | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)
    # The data as received; the typed ``payload`` is what handlers normally read.
    data: Any = None

    @classmethod
    def of(
        cls,
        payload: Payload,
        *,
        id: str,
        source: str,
        subject: str | None = None,
        extensions: Mapping[str, str] | None = None,
    ) -> IncomingEvent:
        """The event carrying ``payload``, as a handler would receive it (handy in tests)."""
        execution_id = getattr(payload, "execution_id", None)
        subject = subject or (execution_id if isinstance(execution_id, str) else None)
        defaults = {PARTITION_KEY: subject} if subject else {}
        return cls(
            id=id,
            type=payload.TYPE,
            source=source,
            payload=payload,
            subject=subject,
            extensions={**defaults, **(extensions or {})},
        )

    def payload_as(self, model: builtins.type[P]) -> P:
        """The payload as ``model``; ``InvalidEvent`` (a 400) if a trigger sent another type."""
        if not isinstance(self.payload, model):
            raise InvalidEvent(f"expected {model.TYPE}, got {self.type}")
        return self.payload

    @property
    def partition_key(self) -> str | None:
        return self.extensions.get(PARTITION_KEY)

    @property
    def replayed_from(self) -> str | None:
        return self.extensions.get(REPLAYED_FROM)

    @property
    def replay_session(self) -> str | None:
        return self.extensions.get(REPLAY_SESSION)

    @property
    def is_replay(self) -> bool:
        return self.replayed_from is not None or self.replay_session is not None

    @property
    def key(self) -> str:
        """What makes this event unique: CloudEvents scopes ``id`` to its ``source``."""
        return f"{self.source}\n{self.id}"


def decode_event(
    headers: Mapping[str, str], body: bytes, *, open_types: bool = False
) -> IncomingEvent:
    """Decode a binary or structured HTTP CloudEvent; ``InvalidEvent`` if it can never be used.

    With ``open_types`` any valid CloudEvent is taken: a type outside the catalogue, a payload
    that fails its model, or data that is not JSON gets the ``Untyped`` payload.
    """
    unmarshal = _json_or_text if open_types else _json_data
    try:
        cloud_event = from_http(dict(headers), body, data_unmarshaller=unmarshal)
    except GenericException as error:
        raise InvalidEvent(f"not a valid CloudEvent: {_short(error)}") from error
    attributes: dict[str, Any] = dict(cloud_event.get_attributes())
    return validate_event(attributes, cloud_event.get_data(), open_types=open_types)


def validate_event(
    attributes: Mapping[str, Any], data: object, *, open_types: bool = False
) -> IncomingEvent:
    """Check CloudEvent attributes and payload already split apart by a transport binding."""
    for name in ("id", "source", "type"):
        if not isinstance(attributes.get(name), str) or not attributes[name]:
            raise InvalidEvent(f"attribute {name!r} must be a non-empty string")
    if attributes.get("specversion") != "1.0":
        raise InvalidEvent(f"unsupported specversion {attributes.get('specversion')!r}")
    content_type = attributes.get("datacontenttype")
    if content_type is not None and not _is_json(str(content_type)) and not open_types:
        raise InvalidEvent(f"datacontenttype must be application/json, not {content_type!r}")
    return IncomingEvent(
        id=attributes["id"],
        type=attributes["type"],
        source=attributes["source"],
        subject=_optional_str(attributes.get("subject")),
        time=_parse_time(attributes.get("time")),
        extensions={
            name: str(value)
            for name, value in attributes.items()
            if name not in CORE_ATTRIBUTES and value is not None
        },
        payload=_payload(attributes["type"], data, open_types),
        data=data,
    )


def _payload(ce_type: str, data: object, open_types: bool) -> Payload:
    try:
        return parse_payload(ce_type, data)
    except InvalidEvent:
        if open_types:
            return Untyped()
        raise


def _json_or_text(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _json_data(raw: str | bytes) -> Any:
    # The library's default falls back to handing over the raw text; we want a refusal.
    return json.loads(raw)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _parse_time(value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError as error:
        raise InvalidEvent(f"attribute 'time' is not RFC 3339: {value!r}") from error


def _short(error: Exception, limit: int = 200) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."
