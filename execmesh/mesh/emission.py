"""The outgoing side of the contract: what a handler emits, as CloudEvents 1.0 values.

Everything here is pure: building ids, attributes and the HTTP binary encoding. Sending is
``execmesh.mesh.sender``'s job.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from execmesh.errors import ConfigError
from execmesh.events import Payload, source_of
from execmesh.mesh.envelope import PARTITION_KEY, REPLAY_REPROCESS, REPLAY_SESSION, IncomingEvent

# Fixed forever: changing it changes every derived id and breaks deduplication across versions.
EVENT_ID_NAMESPACE = uuid.UUID("b13bf5fa-0b51-412a-b88c-c5ec32c98f24")
CONTENT_TYPE = "application/json"
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")


@dataclass(frozen=True)
class Emission:
    """An event a handler asks to emit; the contract fills in id, source and time.

    ``discriminator`` tells apart two emissions of one type and subject caused by one event.
    ``subject`` defaults to the payload's execution id, else to the input event's subject.
    """

    payload: Payload
    subject: str | None = None
    discriminator: str = ""
    extensions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutgoingEvent:
    id: str
    type: str
    source: str
    data: Mapping[str, Any]
    time: datetime
    subject: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def partition_key(self) -> str | None:
        return self.extensions.get(PARTITION_KEY)


def derive_event_id(
    cause: str, ce_type: str, *, subject: str | None = None, discriminator: str = ""
) -> str:
    """The id of an event caused by ``cause``: the same inputs always give the same id.

    The subject takes part so that one cause (a tick, say) emitting the same type for many
    executions gives each its own id without a discriminator.
    """
    name = "\n".join((cause, ce_type, subject or "", discriminator))
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def build_event(
    payload: Payload,
    *,
    component: str,
    time: datetime,
    cause: str | None = None,
    discriminator: str = "",
    id: str | None = None,
    subject: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> OutgoingEvent:
    """An execmesh event; ``subject`` and ``partitionkey`` default to the execution id.

    The id is ``id`` if given, else derived from ``cause`` if given, else random.
    """
    subject = subject or _execution_id(payload)
    if id is None:
        id = (
            derive_event_id(cause, payload.TYPE, subject=subject, discriminator=discriminator)
            if cause is not None
            else str(uuid.uuid4())
        )
    all_extensions = {PARTITION_KEY: subject} if subject else {}
    all_extensions.update(extensions or {})
    check_extension_names(all_extensions)
    return OutgoingEvent(
        id=id,
        type=payload.TYPE,
        source=source_of(component),
        data=payload.to_data(),
        time=time,
        subject=subject,
        extensions=all_extensions,
    )


def event_from_emission(
    emission: Emission, cause: IncomingEvent, *, component: str, time: datetime
) -> OutgoingEvent:
    # A replay session follows the causal chain, so what a replayed event caused is marked too.
    inherited = {
        name: cause.extensions[name]
        for name in (REPLAY_SESSION, REPLAY_REPROCESS)
        if name in cause.extensions
    }
    return build_event(
        emission.payload,
        component=component,
        time=time,
        cause=cause.key,
        discriminator=emission.discriminator,
        subject=emission.subject or _execution_id(emission.payload) or cause.subject,
        extensions={**inherited, **emission.extensions},
    )


def parse_ce_overrides(raw: str) -> Mapping[str, str]:
    """The extensions of ``K_CE_OVERRIDES`` (``{"extensions": {...}}``, set by a SinkBinding)."""
    if not raw.strip():
        return {}
    try:
        document = json.loads(raw)
        extensions = document.get("extensions") or {}
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"K_CE_OVERRIDES is not a JSON object: {raw[:200]!r}") from error
    if not isinstance(extensions, Mapping):
        raise ConfigError("K_CE_OVERRIDES: 'extensions' must be an object")
    overrides = {str(name): _attribute_text(value) for name, value in extensions.items()}
    check_extension_names(overrides)
    return overrides


def apply_overrides(event: OutgoingEvent, overrides: Mapping[str, str]) -> OutgoingEvent:
    if not overrides:
        return event
    return replace(event, extensions={**event.extensions, **overrides})


def check_extension_names(extensions: Mapping[str, str]) -> None:
    for name in extensions:
        if not _EXTENSION_NAME.match(name):
            raise ConfigError(f"invalid CloudEvents extension name {name!r}: use [a-z0-9]{{1,20}}")


def to_binary_http(event: OutgoingEvent) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body of ``event`` in binary content mode."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time.isoformat(),
        "datacontenttype": CONTENT_TYPE,
        **event.extensions,
    }
    if event.subject is not None:
        attributes["subject"] = event.subject
    headers, body = to_binary(CloudEvent(attributes, dict(event.data)), data_marshaller=_dumps)
    return headers, body


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _execution_id(payload: Payload) -> str | None:
    value = getattr(payload, "execution_id", None)
    return value if isinstance(value, str) else None


def _attribute_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
