"""Where sagas live: one MongoDB document per execution, saved with optimistic concurrency.

``save`` succeeds only if the saga is still at the version it was read at, so two instances
handling events of the same execution never overwrite each other: the loser gets
``VersionConflict``, reads again and re-applies its event. The compare-and-set itself is
``execmesh.versioned`` (FerretDB's ``find_one_and_update`` is not atomic).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import PyMongoError

from execmesh.errors import TransientError
from execmesh.events import TerminalStatus, parse_payload
from execmesh.saga.machine import ACTIVE_PHASES, Applied, Phase, Saga
from execmesh.versioned import VersionConflict, VersionedCollection

COLLECTION = "sagas"
T = TypeVar("T")
_QUIET_PHASES = frozenset({Phase.POD_CREATED})


class SagaStore(Protocol):
    def get(self, execution_id: str) -> Saga | None: ...

    def save(self, saga: Saga) -> Saga:
        """Store ``saga`` if its version is still current; returns it with the next version."""
        ...

    def due(self, now: datetime, limit: int) -> list[str]:
        """Ids of active sagas whose deadline is at or before ``now``, earliest first."""
        ...

    def record_tick(self, key: str, execution_ids: list[str], purge_after: datetime) -> None:
        """Remember which sagas the tick ``key`` is about to end."""
        ...

    def tick_targets(self, key: str) -> list[str] | None:
        """What ``record_tick`` remembered for ``key``; None for a tick never seen."""
        ...

    def purge(self, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` sagas (and tick records) whose ``purge_after`` has passed."""
        ...


class InMemorySagaStore:
    def __init__(self) -> None:
        self._sagas: dict[str, Saga] = {}
        self._ticks: dict[str, tuple[list[str], datetime]] = {}
        self._lock = threading.Lock()

    def get(self, execution_id: str) -> Saga | None:
        with self._lock:
            return self._sagas.get(execution_id)

    def save(self, saga: Saga) -> Saga:
        with self._lock:
            current = self._sagas.get(saga.execution_id)
            if (0 if current is None else current.version) != saga.version:
                raise VersionConflict(saga.execution_id)
            saved = replace(saga, version=saga.version + 1)
            self._sagas[saga.execution_id] = saved
            return saved

    def due(self, now: datetime, limit: int) -> list[str]:
        with self._lock:
            due = [
                s
                for s in self._sagas.values()
                if s.phase in ACTIVE_PHASES and s.deadline is not None and s.deadline <= now
            ]
        due.sort(key=lambda s: (s.deadline or now, s.execution_id))
        return [s.execution_id for s in due[:limit]]

    def record_tick(self, key: str, execution_ids: list[str], purge_after: datetime) -> None:
        with self._lock:
            self._ticks[key] = (list(execution_ids), purge_after)

    def tick_targets(self, key: str) -> list[str] | None:
        with self._lock:
            recorded = self._ticks.get(key)
        return None if recorded is None else list(recorded[0])

    def purge(self, now: datetime, limit: int) -> int:
        with self._lock:
            expired = [
                s.execution_id
                for s in self._sagas.values()
                if s.purge_after is not None and s.purge_after <= now
            ][:limit]
            for execution_id in expired:
                del self._sagas[execution_id]
            for key in [k for k, (_, until) in self._ticks.items() if until <= now][:limit]:
                del self._ticks[key]
        return len(expired)


class MongoSagaStore:
    """Sagas in ``sagas`` (heads: only active sagas, with their deadline) and its versions.

    ``sagas.retired`` lists the sagas that may be purged and when, ``sagas.ticks`` which sagas
    each tick ended; both are small, because FerretDB answers every query by a scan.
    """

    def __init__(self, database: Database[dict[str, Any]], name: str = COLLECTION) -> None:
        self.documents = VersionedCollection(
            database, name, head_fields=("deadline",), head_if=_is_active
        )
        self.retired = database[f"{name}.retired"]
        self.ticks = database[f"{name}.ticks"]

    def ensure_indexes(self) -> None:
        self.documents.ensure_indexes()
        # One index per collection at most: every index slows every write on FerretDB.
        self.documents.heads.create_index([("deadline", ASCENDING)])
        self.retired.create_index([("purge_after", ASCENDING)])

    def get(self, execution_id: str) -> Saga | None:
        document = self.documents.get(execution_id)
        return None if document is None else from_document(document)

    def save(self, saga: Saga) -> Saga:
        # pod.created moves no deadline, so the save is one write. (A start-up deadline that a
        # tick re-arms in pod_created leaves the head early: the next tick's read repairs it.)
        quiet = saga.phase in _QUIET_PHASES
        version = self.documents.save(
            saga.execution_id, to_document(saga), saga.version, refresh_head=not quiet
        )
        if saga.purge_after is not None:
            self._mongo(
                lambda: self.retired.replace_one(
                    {"_id": saga.execution_id}, {"purge_after": saga.purge_after}, upsert=True
                )
            )
        return replace(saga, version=version)

    def due(self, now: datetime, limit: int) -> list[str]:
        query = {"deadline": {"$lte": now}}
        heads = self.documents.find_heads(query, [("deadline", ASCENDING)], limit)
        return [str(head["_id"]) for head in heads]

    def record_tick(self, key: str, execution_ids: list[str], purge_after: datetime) -> None:
        document = {"execution_ids": execution_ids, "purge_after": purge_after}
        self._mongo(lambda: self.ticks.replace_one({"_id": key}, document, upsert=True))

    def tick_targets(self, key: str) -> list[str] | None:
        document = self._mongo(lambda: self.ticks.find_one({"_id": key}))
        return None if document is None else [str(i) for i in document["execution_ids"]]

    def purge(self, now: datetime, limit: int) -> int:
        expired = {"purge_after": {"$lte": now}}
        retired = self._mongo(lambda: list(self.retired.find(expired).limit(limit)))
        ids = [str(document["_id"]) for document in retired]
        if ids:
            self.documents.delete(ids)
        # Listed until their versions are gone, so a purge cut short is finished next time.
        purged = self._mongo(lambda: self.retired.delete_many({"_id": {"$in": ids}}))
        self._mongo(lambda: self.ticks.delete_many(expired))
        return purged.deleted_count

    def _mongo(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except PyMongoError as error:
            raise TransientError(f"sagas: {error}") from error


def _is_active(document: Mapping[str, Any]) -> bool:
    return document.get("deadline") is not None


def to_document(saga: Saga) -> dict[str, Any]:
    document: dict[str, Any] = {
        "phase": saga.phase.value,
        "updated_at": saga.updated_at,
        "applied": [
            {"key": a.key, "emitted": [{"type": p.TYPE, "data": p.to_data()} for p in a.emitted]}
            for a in saga.applied
        ],
    }
    optional = {
        "user_id": saga.user_id,
        "timeout_seconds": saga.timeout_seconds,
        "accepted_at": saga.accepted_at,
        "started_at": saga.started_at,
        "deadline": saga.deadline,
        "pod_name": saga.pod_name,
        "namespace": saga.namespace,
        "cancel_reason": saga.cancel_reason,
        "outcome": None if saga.outcome is None else saga.outcome.value,
        "ended_by": saga.ended_by,
        "purge_after": saga.purge_after,
    }
    document.update({name: value for name, value in optional.items() if value is not None})
    return document


def from_document(document: dict[str, Any]) -> Saga:
    outcome = document.get("outcome")
    return Saga(
        execution_id=document["_id"],
        phase=Phase(document["phase"]),
        updated_at=_utc(document["updated_at"]),
        version=int(document["version"]),
        user_id=document.get("user_id"),
        timeout_seconds=document.get("timeout_seconds"),
        accepted_at=_utc_or_none(document.get("accepted_at")),
        # Absent from documents saved before the start-up budget existed.
        started_at=_utc_or_none(document.get("started_at")),
        deadline=_utc_or_none(document.get("deadline")),
        pod_name=document.get("pod_name"),
        namespace=document.get("namespace"),
        cancel_reason=document.get("cancel_reason"),
        outcome=None if outcome is None else TerminalStatus(outcome),
        ended_by=document.get("ended_by"),
        purge_after=_utc_or_none(document.get("purge_after")),
        applied=tuple(
            Applied(
                a["key"], tuple(parse_payload(e["type"], e["data"]) for e in a.get("emitted", ()))
            )
            for a in document.get("applied", ())
        ),
    )


def _utc(value: datetime) -> datetime:
    # Clients built without tz_aware hand back naive datetimes, which are UTC in BSON.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)
