"""Every event the broker carried, stored once, queryable by execution, type and time.

The recorder may receive an event more than once (at-least-once delivery); the document id
is derived from the CloudEvent's identity (``source`` + ``id``), so a redelivery is a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from execmesh.mesh.envelope import PARTITION_KEY, REPLAY_SESSION, REPLAYED_FROM

_CORE = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype")


@dataclass(frozen=True)
class StoredEvent:
    id: str
    source: str
    type: str
    time: datetime
    data: Any
    subject: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def execution_id(self) -> str | None:
        return self.extensions.get(PARTITION_KEY) or self.subject


@dataclass(frozen=True)
class EventFilter:
    execution_ids: Sequence[str] = ()
    types: Sequence[str] = ()
    exclude_types: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    user_id: str | None = None
    include_replayed: bool = False


def record_id(source: str, event_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}\n{event_id}"))


def stored_event(attributes: Mapping[str, Any], data: Any, received_at: datetime) -> StoredEvent:
    time = attributes.get("time")
    return StoredEvent(
        id=str(attributes["id"]),
        source=str(attributes["source"]),
        type=str(attributes["type"]),
        time=_as_datetime(time) if time else received_at,
        data=data,
        subject=attributes.get("subject"),
        extensions={k: str(v) for k, v in attributes.items() if k not in _CORE},
    )


class EventStore:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self.collection = collection

    def ensure_indexes(self) -> None:
        self.collection.create_index([("execution_id", ASCENDING), ("time", ASCENDING)])
        self.collection.create_index([("type", ASCENDING), ("time", ASCENDING)])
        self.collection.create_index([("time", ASCENDING)])
        self.collection.create_index([("user_id", ASCENDING)])

    def record(self, event: StoredEvent) -> bool:
        """Store ``event``; ``False`` if it was already stored."""
        try:
            self.collection.insert_one(to_document(event))
        except DuplicateKeyError:
            return False
        return True

    def count(self, selection: EventFilter) -> int:
        return self.collection.count_documents(self._query(selection))

    def scan(
        self, selection: EventFilter, *, after: tuple[datetime, str] | None = None, limit: int
    ) -> list[StoredEvent]:
        """Events in time order, resuming strictly after the ``(time, record id)`` cursor."""
        query = self._query(selection)
        if after is not None:
            time, key = after
            query = {
                "$and": [
                    query,
                    {"$or": [{"time": {"$gt": time}}, {"time": time, "_id": {"$gt": key}}]},
                ]
            }
        cursor = self.collection.find(query).sort([("time", ASCENDING), ("_id", ASCENDING)])
        return [_from_document(d) for d in cursor.limit(limit)]

    def iterate(self, selection: EventFilter, batch: int = 500) -> Iterator[StoredEvent]:
        after = None
        while page := self.scan(selection, after=after, limit=batch):
            yield from page
            last = page[-1]
            after = (last.time, record_id(last.source, last.id))

    def _query(self, selection: EventFilter) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if not selection.include_replayed:
            query["replayed"] = False
        executions = list(selection.execution_ids)
        if selection.user_id is not None:
            owned = self.collection.distinct("execution_id", {"user_id": selection.user_id})
            executions = [e for e in executions if e in owned] if executions else owned
            if not executions:
                executions = ["\0no execution"]
        if executions:
            query["execution_id"] = {"$in": executions}
        types: dict[str, Any] = {}
        if selection.types:
            types["$in"] = list(selection.types)
        if selection.exclude_types:
            types["$nin"] = list(selection.exclude_types)
        if types:
            query["type"] = types
        window: dict[str, Any] = {}
        if selection.since is not None:
            window["$gte"] = selection.since
        if selection.until is not None:
            window["$lt"] = selection.until
        if window:
            query["time"] = window
        return query


def to_document(event: StoredEvent) -> dict[str, Any]:
    data = event.data
    user_id = data.get("user_id") if isinstance(data, Mapping) else None
    return {
        "_id": record_id(event.source, event.id),
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
        "subject": event.subject,
        "execution_id": event.execution_id,
        "user_id": user_id,
        "extensions": dict(event.extensions),
        "replayed": REPLAYED_FROM in event.extensions or REPLAY_SESSION in event.extensions,
        "data": data,
    }


def _from_document(document: Mapping[str, Any]) -> StoredEvent:
    return StoredEvent(
        id=document["id"],
        source=document["source"],
        type=document["type"],
        time=_as_datetime(document["time"]),
        data=document.get("data"),
        subject=document.get("subject"),
        extensions=document.get("extensions") or {},
    )


def _as_datetime(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
