"""Replay sessions: what to replay, where, how fast, and how far they got.

A session lives in MongoDB so that any replica of the replay function can run it and a
restart loses nothing: the runner holds a lease it renews as it goes, records its cursor
after every batch, and a session whose lease ran out is resumed by whoever claims it next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from execmesh.events import ReplayRequested
from execmesh.replay.eventstore import EventFilter


class SessionState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = "finished"


ACTIVE = (SessionState.PENDING, SessionState.RUNNING)
ENDED = (SessionState.CANCELLED, SessionState.FINISHED)


@dataclass(frozen=True)
class Session:
    id: str
    selection: EventFilter
    target: str
    created_at: datetime
    dry_run: bool = False
    speed: float | None = None
    batch_size: int = 100
    max_count: int | None = None
    reprocess: bool = False
    state: SessionState = SessionState.PENDING
    matched: int = 0
    emitted: int = 0
    preview: tuple[Mapping[str, Any], ...] = field(default=())
    cursor: tuple[datetime, str] | None = None
    # Wall-clock instant at which the first replayed event is due; shifted on resume.
    anchor: datetime | None = None
    first_event_time: datetime | None = None
    finished_at: datetime | None = None


def session_from_request(request: ReplayRequested, now: datetime) -> Session:
    return Session(
        id=request.session_id,
        selection=EventFilter(
            execution_ids=request.execution_ids,
            types=request.types,
            exclude_types=request.exclude_types,
            since=request.since,
            until=request.until,
            user_id=request.user_id,
        ),
        target=request.target,
        created_at=now,
        dry_run=request.dry_run,
        speed=request.speed,
        batch_size=request.batch_size,
        max_count=request.max_count,
        reprocess=request.reprocess,
    )


def due_at(session: Session, event_time: datetime) -> datetime | None:
    """When an event should be re-emitted: its original gap from the first, divided by speed."""
    if session.speed is None or session.anchor is None or session.first_event_time is None:
        return None
    return session.anchor + (event_time - session.first_event_time) / session.speed


class SessionStore:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self.collection = collection

    def create(self, session: Session) -> bool:
        try:
            self.collection.insert_one(_to_document(session))
        except DuplicateKeyError:
            return False
        return True

    def get(self, session_id: str) -> Session | None:
        document = self.collection.find_one({"_id": session_id})
        return None if document is None else _from_document(document)

    def find(self, limit: int = 100) -> list[Session]:
        cursor = self.collection.find({}).sort("created_at", -1).limit(limit)
        return [_from_document(d) for d in cursor]

    def claim(
        self, session_id: str | None, owner: str, now: datetime, lease: timedelta
    ) -> Session | None:
        """Take a session to run: a pending one, or an active one whose runner went silent."""
        query: dict[str, Any] = {
            "state": {"$in": [s.value for s in ACTIVE]},
            "$or": [{"lease_until": None}, {"lease_until": {"$lte": now}}],
        }
        if session_id is not None:
            query["_id"] = session_id
        document = self.collection.find_one_and_update(
            query,
            {
                "$set": {
                    "state": SessionState.RUNNING.value,
                    "owner": owner,
                    "lease_until": now + lease,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        return None if document is None else _from_document(document)

    def checkpoint(
        self, session: Session, owner: str, now: datetime, lease: timedelta
    ) -> Session | None:
        """Save progress and renew the lease; ``None`` once the session is no longer ours to
        run (paused, cancelled, or taken over). Progress made before a pause is kept."""
        document = self.collection.find_one_and_update(
            {"_id": session.id, "owner": owner},
            {"$set": {**_progress(session), "lease_until": now + lease}},
            return_document=ReturnDocument.AFTER,
        )
        if document is None or document["state"] != SessionState.RUNNING.value:
            return None
        return _from_document(document)

    def finish(self, session: Session, owner: str, now: datetime) -> bool:
        result = self.collection.update_one(
            {"_id": session.id, "owner": owner, "state": SessionState.RUNNING.value},
            {
                "$set": {
                    **_progress(session),
                    "state": SessionState.FINISHED.value,
                    "finished_at": now,
                    "lease_until": None,
                }
            },
        )
        return result.modified_count == 1

    def pause(self, session_id: str) -> bool:
        return self._move(session_id, ACTIVE, SessionState.PAUSED)

    def resume(self, session_id: str, now: datetime) -> bool:
        # The pause must not be replayed as a gap: re-anchor from where the cursor stands.
        session = self.get(session_id)
        if session is None or session.state is not SessionState.PAUSED:
            return False
        # Clearing the lease matters: a runner that saw the pause late may have renewed it.
        update: dict[str, Any] = {"state": SessionState.PENDING.value, "lease_until": None}
        if session.cursor and session.first_event_time and session.speed:
            update["anchor"] = now - (session.cursor[0] - session.first_event_time) / session.speed
        result = self.collection.update_one(
            {"_id": session_id, "state": SessionState.PAUSED.value}, {"$set": update}
        )
        return result.modified_count == 1

    def cancel(self, session_id: str) -> bool:
        return self._move(session_id, (*ACTIVE, SessionState.PAUSED), SessionState.CANCELLED)

    def _move(self, session_id: str, sources: tuple[SessionState, ...], to: SessionState) -> bool:
        result = self.collection.update_one(
            {"_id": session_id, "state": {"$in": [s.value for s in sources]}},
            {"$set": {"state": to.value, "lease_until": None}},
        )
        return result.modified_count == 1


def _progress(session: Session) -> dict[str, Any]:
    return {
        "matched": session.matched,
        "emitted": session.emitted,
        "preview": list(session.preview),
        "cursor": list(session.cursor) if session.cursor else None,
        "anchor": session.anchor,
        "first_event_time": session.first_event_time,
    }


def _to_document(session: Session) -> dict[str, Any]:
    return {
        "_id": session.id,
        "selection": asdict(session.selection),
        "target": session.target,
        "created_at": session.created_at,
        "dry_run": session.dry_run,
        "speed": session.speed,
        "batch_size": session.batch_size,
        "max_count": session.max_count,
        "reprocess": session.reprocess,
        "state": session.state.value,
        "finished_at": None,
        "owner": None,
        "lease_until": None,
        **_progress(session),
    }


def _from_document(document: Mapping[str, Any]) -> Session:
    selection = document["selection"]
    cursor = document.get("cursor")
    return replace(
        Session(
            id=document["_id"],
            selection=EventFilter(
                execution_ids=tuple(selection.get("execution_ids") or ()),
                types=tuple(selection.get("types") or ()),
                exclude_types=tuple(selection.get("exclude_types") or ()),
                since=_utc(selection.get("since")),
                until=_utc(selection.get("until")),
                user_id=selection.get("user_id"),
            ),
            target=document["target"],
            created_at=_utc(document["created_at"]) or datetime.now(UTC),
        ),
        dry_run=document.get("dry_run", False),
        speed=document.get("speed"),
        batch_size=document.get("batch_size", 100),
        max_count=document.get("max_count"),
        reprocess=document.get("reprocess", False),
        state=SessionState(document["state"]),
        matched=document.get("matched", 0),
        emitted=document.get("emitted", 0),
        preview=tuple(document.get("preview") or ()),
        cursor=(_utc(cursor[0]), cursor[1]) if cursor else None,  # type: ignore[arg-type]
        anchor=_utc(document.get("anchor")),
        first_event_time=_utc(document.get("first_event_time")),
        finished_at=_utc(document.get("finished_at")),
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
