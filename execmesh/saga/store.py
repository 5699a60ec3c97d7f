"""Where sagas live: one MongoDB document per execution, saved with optimistic concurrency.

``save`` succeeds only if the saga is still at the version it was read at, so two instances
handling events of the same execution never overwrite each other: the loser gets
``VersionConflict``, reads again and re-applies its event. The compare-and-set itself is
``execmesh.versioned`` (FerretDB's ``find_one_and_update`` is not atomic).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo import ASCENDING
from pymongo.database import Database

from execmesh.events import TerminalStatus, parse_payload
from execmesh.saga.machine import ACTIVE_PHASES, Applied, Phase, Saga
from execmesh.versioned import VersionConflict, VersionedCollection

COLLECTION = "sagas"
_QUIET_PHASES = frozenset({Phase.POD_CREATED, Phase.RUNNING})


class SagaStore(Protocol):
    def get(self, execution_id: str) -> Saga | None: ...

    def save(self, saga: Saga) -> Saga:
        """Store ``saga`` if its version is still current; returns it with the next version."""
        ...

    def due(self, now: datetime, limit: int) -> list[str]:
        """Ids of active sagas whose deadline is at or before ``now``, earliest first."""
        ...

    def ended_by(self, key: str, limit: int) -> list[str]:
        """Ids of the sagas that the event ``key`` finished."""
        ...

    def purge(self, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` sagas whose ``purge_after`` has passed."""
        ...


class InMemorySagaStore:
    def __init__(self) -> None:
        self._sagas: dict[str, Saga] = {}
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

    def ended_by(self, key: str, limit: int) -> list[str]:
        with self._lock:
            return sorted(s.execution_id for s in self._sagas.values() if s.ended_by == key)[:limit]

    def purge(self, now: datetime, limit: int) -> int:
        with self._lock:
            expired = [
                s.execution_id
                for s in self._sagas.values()
                if s.purge_after is not None and s.purge_after <= now
            ][:limit]
            for execution_id in expired:
                del self._sagas[execution_id]
        return len(expired)


class MongoSagaStore:
    def __init__(self, database: Database[dict[str, Any]], name: str = COLLECTION) -> None:
        self.documents = VersionedCollection(database, name, head_fields=HEAD_FIELDS)

    def ensure_indexes(self) -> None:
        self.documents.ensure_indexes()
        # Heads are few fields each; one index, because every index slows every head write.
        self.documents.heads.create_index([("deadline", ASCENDING)])

    def get(self, execution_id: str) -> Saga | None:
        document = self.documents.get(execution_id)
        return None if document is None else from_document(document)

    def save(self, saga: Saga) -> Saga:
        # Moving to pod_created or running changes no head field, so the save is one write.
        refresh = saga.phase not in _QUIET_PHASES
        version = self.documents.save(
            saga.execution_id, to_document(saga), saga.version, refresh_head=refresh
        )
        return replace(saga, version=version)

    def due(self, now: datetime, limit: int) -> list[str]:
        # Only active sagas carry a deadline (it is dropped when they finish).
        query = {"deadline": {"$lte": now}}
        return self._ids(query, sort=[("deadline", ASCENDING), ("_id", ASCENDING)], limit=limit)

    def ended_by(self, key: str, limit: int) -> list[str]:
        return self._ids({"ended_by": key}, sort=[("_id", ASCENDING)], limit=limit)

    def purge(self, now: datetime, limit: int) -> int:
        query = {"purge_after": {"$lte": now}}
        expired = self._ids(query, sort=[("purge_after", ASCENDING)], limit=limit)
        return self.documents.delete(expired)

    def _ids(self, query: dict[str, Any], sort: list[tuple[str, int]], limit: int) -> list[str]:
        return [str(d["_id"]) for d in self.documents.find_heads(query, sort, limit)]


# What the queries above look at; the rest of a saga lives only in its versions.
HEAD_FIELDS = ("deadline", "purge_after", "ended_by")


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
