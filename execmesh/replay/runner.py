"""Running a replay session: page through the store, pace, re-emit marked copies."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from execmesh.mesh.emission import EVENT_ID_NAMESPACE, OutgoingEvent
from execmesh.mesh.envelope import REPLAY_REPROCESS, REPLAY_SESSION, REPLAYED_FROM
from execmesh.replay.eventstore import EventStore, StoredEvent, record_id
from execmesh.replay.sessions import Session, SessionStore, due_at

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)
PREVIEW_SIZE = 10
# Long waits are cut into slices so a pause or cancel is noticed within about this long.
MAX_SLEEP = timedelta(seconds=1)


@dataclass(frozen=True)
class Clock:
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    sleep: Callable[[float], None] = time.sleep


def replayed_copy(event: StoredEvent, session: Session) -> OutgoingEvent:
    extensions = {
        k: v
        for k, v in event.extensions.items()
        if k not in (REPLAYED_FROM, REPLAY_SESSION, REPLAY_REPROCESS)
    }
    extensions[REPLAYED_FROM] = event.id
    extensions[REPLAY_SESSION] = session.id
    if session.reprocess:
        extensions[REPLAY_REPROCESS] = "true"
    return OutgoingEvent(
        id=str(uuid.uuid5(EVENT_ID_NAMESPACE, f"replay\n{session.id}\n{event.source}\n{event.id}")),
        type=event.type,
        source=event.source,
        data=event.data if isinstance(event.data, dict) else {"value": event.data},
        time=event.time,
        subject=event.subject,
        extensions=extensions,
    )


def preview_of(event: StoredEvent) -> dict[str, str]:
    return {
        "id": event.id,
        "type": event.type,
        "time": event.time.isoformat(),
        "execution_id": event.execution_id or "",
    }


class SessionRunner:
    def __init__(
        self,
        events: EventStore,
        sessions: SessionStore,
        send: Callable[[Session, OutgoingEvent], None],
        *,
        owner: str,
        clock: Clock | None = None,
    ) -> None:
        self.events = events
        self.sessions = sessions
        self.send = send
        self.owner = owner
        self.clock = clock or Clock()

    def run(self, session: Session) -> Session:
        """Run a claimed session until it finishes or stops being ours; its last state."""
        if session.cursor is None and session.emitted == 0:
            session = self._start(session)
            if session.dry_run:
                return self._finish(session)
        while True:
            if session.max_count is not None and session.emitted >= session.max_count:
                return self._finish(session)
            page = self.events.scan(
                session.selection, after=session.cursor, limit=session.batch_size
            )
            if not page:
                return self._finish(session)
            for event in page:
                if session.max_count is not None and session.emitted >= session.max_count:
                    break
                progressed = self._emit_when_due(session, event)
                if progressed is None:
                    return session
                session = progressed
            saved = self.sessions.checkpoint(session, self.owner, self.clock.now(), LEASE)
            if saved is None:
                return session
            session = replace(session, state=saved.state, lease_until=saved.lease_until)

    def _keep_running(self, session: Session) -> Session | None:
        now = self.clock.now()
        if session.lease_until is None or session.lease_until - now < LEASE / 2:
            saved = self.sessions.checkpoint(session, self.owner, now, LEASE)
            return None if saved is None else replace(session, lease_until=saved.lease_until)
        return session if self.sessions.still_running(session) else None

    def _start(self, session: Session) -> Session:
        matched = self.events.count(session.selection)
        if session.max_count is not None:
            matched = min(matched, session.max_count)
        preview = tuple(
            preview_of(e) for e in self.events.scan(session.selection, limit=PREVIEW_SIZE)
        )
        return replace(session, matched=matched, preview=preview)

    def _emit_when_due(self, session: Session, event: StoredEvent) -> Session | None:
        if session.speed is not None and session.anchor is None:
            session = replace(session, anchor=self.clock.now(), first_event_time=event.time)
        due = due_at(session, event.time)
        while due is not None and (wait := due - self.clock.now()) > timedelta(0):
            if wait > MAX_SLEEP:
                # A long gap: look for a pause or cancel meanwhile, and renew the lease (a
                # new version each time) only once half of it is gone.
                kept = self._keep_running(session)
                if kept is None:
                    return None
                session = kept
            self.clock.sleep(min(wait, MAX_SLEEP).total_seconds())
        self.send(session, replayed_copy(event, session))
        return replace(
            session,
            emitted=session.emitted + 1,
            cursor=(event.time, record_id(event.source, event.id)),
        )

    def _finish(self, session: Session) -> Session:
        self.sessions.finish(session, self.owner, self.clock.now())
        log.info(
            "replay %s finished: %d matched, %d emitted",
            session.id,
            session.matched,
            session.emitted,
        )
        return session
