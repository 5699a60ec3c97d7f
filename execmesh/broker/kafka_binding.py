"""The CloudEvents Kafka protocol binding in binary mode, as the Knative Kafka broker stores
events: each attribute as a `ce_` header, `datacontenttype` as `content-type`, the data as
the value, and the `partitionkey` extension as the record key (kept as a header too, so the
subscriber still sees it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from execmesh.broker.cloudevent import Event, validate


@dataclass(frozen=True)
class KafkaRecord:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def to_record(event: Event) -> KafkaRecord:
    headers = [
        ("content-type" if name == "datacontenttype" else "ce_" + name, value.encode())
        for name, value in event.attributes.items()
    ]
    key = event.attributes.get("partitionkey")
    return KafkaRecord(None if key is None else key.encode(), event.data, headers)


def from_record(value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> Event:
    """The event stored in a record; raises InvalidEvent for a record that is not one."""
    attributes: dict[str, str] = {}
    for name, raw in headers:
        text = raw.decode("utf-8", "replace") if raw is not None else ""
        if name.startswith("ce_"):
            attributes[name[3:]] = text
        elif name.lower() == "content-type":
            attributes["datacontenttype"] = text
    validate(attributes)
    return Event(attributes, value or b"")
