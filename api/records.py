"""What the API accepted, recorded before it answers 202: the request record and outbox entry.

One document per execution in ``api_requests``, ``_id`` = the execution id. Inserting it is the
durable "accepted" (and, with an ``Idempotency-Key``, the idempotency check: the id is derived
from the user and the key, so a second insert of the same key fails on the unique ``_id``).
``published`` turns true once the broker took the ``execution.requested`` event; the
``Outbox`` publishes whatever is left unpublished. The status copied here from the lifecycle
events only serves list filters; ``GET /executions/{id}`` reads the execution document.

What is left to publish is also listed apart, one small document per request in
``api_outbox``, written before the record and deleted once it is published: the outbox's
periodic query then reads the few requests in flight, not every request ever recorded (on
FerretDB a filter on anything but ``_id`` reads the whole collection: 214 ms a round at 5,000
requests). An entry whose record is missing (a crash between the two inserts: no 202 was
given) or already published is dropped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from execmesh.errors import TransientError
from execmesh.events import ExecutionRequested

COLLECTION = "api_requests"
OUTBOX = "api_outbox"
STATUS_RANK = {"requested": 0, "queued": 1, "running": 2}
TERMINAL_RANK = 3


@dataclass(frozen=True)
class RequestRecord:
    request: ExecutionRequested
    body_hash: str
    created_at: datetime
    published: bool = False
    callback_url: str | None = None
    status: str = "requested"

    @property
    def execution_id(self) -> str:
        return self.request.execution_id

    @property
    def user_id(self) -> str:
        return self.request.user_id

    def to_document(self) -> dict[str, Any]:
        return {
            "_id": self.execution_id,
            "user_id": self.user_id,
            "language": self.request.spec.language,
            "created_at": self.created_at,
            "body_hash": self.body_hash,
            "request": self.request.to_data(),
            "published": self.published,
            "callback_url": self.callback_url,
            "status": self.status,
            "rank": status_rank(self.status),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RequestRecord:
        return cls(
            request=ExecutionRequested.model_validate(document["request"]),
            body_hash=str(document["body_hash"]),
            created_at=document["created_at"],
            published=bool(document.get("published")),
            callback_url=document.get("callback_url"),
            status=str(document.get("status", "requested")),
        )


class AlreadyRecorded(Exception):
    def __init__(self, existing: RequestRecord) -> None:
        super().__init__(existing.execution_id)
        self.existing = existing


def status_rank(status: str) -> int:
    return STATUS_RANK.get(status, TERMINAL_RANK)


def execution_id_for(user_id: str, idempotency_key: str | None) -> str:
    """A fresh id, or with an ``Idempotency-Key`` the same id for every retry of that key."""
    if idempotency_key is None:
        return uuid.uuid4().hex[:24]
    return hashlib.sha256(f"{user_id}\n{idempotency_key}".encode()).hexdigest()[:24]


def body_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Page:
    records: list[RequestRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class ListFilter:
    user_id: str | None
    status: str | None = None
    language: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class RequestRecords:
    def __init__(self, database: Database[dict[str, Any]]) -> None:
        self.records = database[COLLECTION]
        self.outbox = database[OUTBOX]

    def ensure_indexes(self) -> None:
        self.records.create_index([("user_id", ASCENDING), ("created_at", DESCENDING)])
        self.outbox.create_index([("created_at", ASCENDING)])
        # Records written before the outbox had a collection of its own: list them there once.
        for document in self.records.find({"published": False}, {"created_at": 1}):
            self._list_unpublished(str(document["_id"]), document["created_at"])

    def insert(self, record: RequestRecord) -> None:
        """Record ``record``; ``AlreadyRecorded`` with what is there if its id is taken."""
        try:
            # The outbox entry first: a crash in between leaves an entry without a record,
            # which the outbox drops, never a record that nobody would publish.
            self._list_unpublished(record.execution_id, record.created_at)
            self.records.insert_one(record.to_document())
        except DuplicateKeyError:
            existing = self.get(record.execution_id)
            if existing is None:  # deleted in between: nothing to compare with
                raise TransientError(f"request {record.execution_id} vanished") from None
            raise AlreadyRecorded(existing) from None
        except PyMongoError as error:
            raise TransientError(f"recording request {record.execution_id}: {error}") from error

    def get(self, execution_id: str) -> RequestRecord | None:
        document = self._call(lambda: self.records.find_one({"_id": execution_id}))
        return None if document is None else RequestRecord.from_document(document)

    def mark_published(self, execution_id: str) -> None:
        self._call(
            lambda: self.records.update_one({"_id": execution_id}, {"$set": {"published": True}})
        )
        self._unlist(execution_id)

    def unpublished(self, before: datetime, limit: int = 100) -> list[RequestRecord]:
        """The records listed in the outbox since before ``before``, oldest first."""
        query = {"created_at": {"$lte": before}}
        cursor = self.outbox.find(query).sort("created_at", ASCENDING).limit(limit)
        waiting = []
        for entry in self._call(lambda: list(cursor)):
            record = self.get(entry["_id"])
            if record is None or record.published:
                self._unlist(entry["_id"])
            else:
                waiting.append(record)
        return waiting

    def _unlist(self, execution_id: str) -> None:
        self._call(lambda: self.outbox.delete_one({"_id": execution_id}))

    def _list_unpublished(self, execution_id: str, created_at: datetime) -> None:
        with contextlib.suppress(DuplicateKeyError):  # listed already (a retry, a replay)
            self.outbox.insert_one({"_id": execution_id, "created_at": created_at})

    def advance_status(self, execution_id: str, status: str) -> None:
        # The condition keeps the status from going back; a lost race only delays a filter.
        rank = status_rank(status)
        self._call(
            lambda: self.records.update_one(
                {"_id": execution_id, "rank": {"$lt": rank}},
                {"$set": {"status": status, "rank": rank}},
            )
        )

    def page(self, where: ListFilter, cursor: str | None, limit: int) -> Page:
        query: dict[str, Any] = {}
        if where.user_id is not None:
            query["user_id"] = where.user_id
        if where.status is not None:
            query["status"] = where.status
        if where.language is not None:
            query["language"] = where.language
        created: dict[str, Any] = {}
        if where.since is not None:
            created["$gte"] = where.since
        if where.until is not None:
            created["$lt"] = where.until
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            after = {
                "$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": last_id}}]
            }
            query = {"$and": [query, after]} if query else after
        if created:
            query = {"$and": [query, {"created_at": created}]}
        found = self.records.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        documents = self._call(lambda: list(found.limit(limit + 1)))
        records = [RequestRecord.from_document(d) for d in documents[:limit]]
        more = len(documents) > limit
        return Page(records, encode_cursor(records[-1]) if more and records else None)

    def _call(self, action: Any) -> Any:
        try:
            return action()
        except PyMongoError as error:
            raise TransientError(f"{COLLECTION}: {error}") from error


def encode_cursor(record: RequestRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.execution_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``ValueError`` for a cursor this API did not make."""
    padded = cursor + "=" * (-len(cursor) % 4)
    at, _, last_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
    if not last_id:
        raise ValueError("not a cursor")
    return datetime.fromisoformat(at), last_id
