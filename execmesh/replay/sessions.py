"""Replay sessions: what to replay, where, how fast, and how far they got.

A session lives in MongoDB so that any replica of the replay function can run it and a
restart loses nothing: the runner holds a lease it renews as it goes, records its cursor
after every batch, and a session whose lease ran out is resumed by whoever claims it next.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo.database import Database

from execmesh.events import ReplayRequested
from execmesh.replay.eventstore import EventFilter
from execmesh.versioned import VersionConflict, VersionedCollection, retry_on_conflict

COLLECTION = "replay_sessions"
# Orphaned sessions looked at per claim without an id (on the ping).
CLAIM_SCAN = 10


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
    owner: str | None = None
    # Names one claim of the session: a runner whose claim was superseded stops.
    claim: str | None = None
    lease_until: datetime | None = None
    version: int = 0


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
    """Sessions as versioned documents: every change is a compare-and-set save.

    A conditional update is not atomic on FerretDB 1.x (two replicas would both claim one
    session, and a checkpoint could undo a pause); the insert of a unique version id is, on
    every backend (see ``execmesh.versioned``).
    """

    def __init__(self, database: Database[dict[str, Any]], name: str = COLLECTION) -> None:
        self.documents = VersionedCollection(database, name)

    def ensure_indexes(self) -> None:
        self.documents.ensure_indexes()

    def create(self, session: Session) -> bool:
        try:
            self.documents.save(session.id, _to_document(session), 0)
        except VersionConflict:
            return False
        return True

    def get(self, session_id: str) -> Session | None:
        document = self.documents.get(session_id)
        return None if document is None else _from_document(document)

    def find(self, limit: int = 100) -> list[Session]:
        heads = self.documents.find_heads({}, [("created_at", -1)], limit)
        return [s for head in heads if (s := self.get(head["_id"])) is not None]

    def claim(
        self, session_id: str | None, owner: str, now: datetime, lease: timedelta
    ) -> Session | None:
        """Take a session to run: a pending one, or an active one whose runner went silent."""
        if session_id is not None:
            candidates = [session_id]
        else:
            orphaned = {
                "state": {"$in": [s.value for s in ACTIVE]},
                "$or": [{"lease_until": None}, {"lease_until": {"$lte": now}}],
            }
            heads = self.documents.find_heads(orphaned, [("created_at", 1)], CLAIM_SCAN)
            candidates = [head["_id"] for head in heads]
        for candidate in candidates:
            session = self.get(candidate)
            if session is None or not is_claimable(session, now):
                continue
            claimed = replace(
                session,
                state=SessionState.RUNNING,
                owner=owner,
                claim=uuid.uuid4().hex,
                lease_until=now + lease,
            )
            try:
                version = self.documents.save(session.id, _to_document(claimed), session.version)
            except VersionConflict:
                continue  # another replica claimed it, or it was paused or cancelled meanwhile
            return replace(claimed, version=version)
        return None

    def checkpoint(
        self, session: Session, owner: str, now: datetime, lease: timedelta
    ) -> Session | None:
        """Save progress and renew the lease; ``None`` once the session is no longer ours to
        run (paused, cancelled, or taken over). Progress made before a pause is kept."""

        def attempt() -> Session | None:
            current = self.get(session.id)
            if current is None or current.claim != session.claim:
                return None
            running = current.state is SessionState.RUNNING
            saved = replace(
                _with_progress(current, session),
                lease_until=now + lease if running else current.lease_until,
            )
            version = self.documents.save(session.id, _to_document(saved), current.version)
            return replace(saved, version=version) if running else None

        return retry_on_conflict(attempt, f"replay session {session.id}")

    def still_running(self, session: Session) -> bool:
        """Whether ``session`` is still running under the claim its runner holds."""
        current = self.get(session.id)
        return (
            current is not None
            and current.claim == session.claim
            and current.state is SessionState.RUNNING
        )

    def finish(self, session: Session, owner: str, now: datetime) -> bool:
        def attempt() -> bool:
            current = self.get(session.id)
            if (
                current is None
                or current.claim != session.claim
                or current.state is not SessionState.RUNNING
            ):
                return False
            finished = replace(
                _with_progress(current, session),
                state=SessionState.FINISHED,
                finished_at=now,
                lease_until=None,
            )
            self.documents.save(session.id, _to_document(finished), current.version)
            return True

        return retry_on_conflict(attempt, f"replay session {session.id}")

    def pause(self, session_id: str) -> bool:
        return self._change(
            session_id,
            lambda s: s.state in ACTIVE,
            lambda s: replace(s, state=SessionState.PAUSED, lease_until=None),
        )

    def resume(self, session_id: str, now: datetime) -> bool:
        def resumed(session: Session) -> Session:
            # The pause must not be replayed as a gap: re-anchor from where the cursor stands.
            # Clearing the lease matters: a runner that saw the pause late may have renewed it.
            anchor = session.anchor
            if session.cursor and session.first_event_time and session.speed:
                anchor = now - (session.cursor[0] - session.first_event_time) / session.speed
            return replace(session, state=SessionState.PENDING, lease_until=None, anchor=anchor)

        return self._change(session_id, lambda s: s.state is SessionState.PAUSED, resumed)

    def cancel(self, session_id: str) -> bool:
        return self._change(
            session_id,
            lambda s: s.state in (*ACTIVE, SessionState.PAUSED),
            lambda s: replace(s, state=SessionState.CANCELLED, lease_until=None),
        )

    def _change(
        self,
        session_id: str,
        allowed: Callable[[Session], bool],
        change: Callable[[Session], Session],
    ) -> bool:
        def attempt() -> bool:
            session = self.get(session_id)
            if session is None or not allowed(session):
                return False
            self.documents.save(session_id, _to_document(change(session)), session.version)
            return True

        return retry_on_conflict(attempt, f"replay session {session_id}")


def is_claimable(session: Session, now: datetime) -> bool:
    return session.state in ACTIVE and (session.lease_until is None or session.lease_until <= now)


def _with_progress(current: Session, progress: Session) -> Session:
    return replace(
        current,
        matched=progress.matched,
        emitted=progress.emitted,
        preview=progress.preview,
        cursor=progress.cursor,
        anchor=progress.anchor,
        first_event_time=progress.first_event_time,
    )


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
        "selection": asdict(session.selection),
        "target": session.target,
        "created_at": session.created_at,
        "dry_run": session.dry_run,
        "speed": session.speed,
        "batch_size": session.batch_size,
        "max_count": session.max_count,
        "reprocess": session.reprocess,
        "state": session.state.value,
        "finished_at": session.finished_at,
        "owner": session.owner,
        "claim": session.claim,
        "lease_until": session.lease_until,
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
        owner=document.get("owner"),
        claim=document.get("claim"),
        lease_until=_utc(document.get("lease_until")),
        version=int(document.get("version", 0)),
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
