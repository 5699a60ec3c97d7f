"""What the replay function does with each event: record it, and run replay sessions.

Sessions run on a small pool of background threads of the function's process; their state
is in MongoDB, so a session whose process died is picked up again on a later ping.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from execmesh.events import PingTick, ReplayRequested, ReplaySession
from execmesh.mesh import Emission, IncomingEvent
from execmesh.mesh.emission import OutgoingEvent
from execmesh.mesh.sender import Emitter, HttpSender
from execmesh.mongo import connect
from execmesh.replay.eventstore import EventStore, stored_event
from execmesh.replay.recorder import GroupRecorder
from execmesh.replay.runner import LEASE, SessionRunner
from execmesh.replay.sessions import Session, SessionStore, session_from_request
from execmesh.settings import Settings

log = logging.getLogger(__name__)

EVENTS = "events"
MAX_RUNNING_SESSIONS = 2


@dataclass
class ReplayService:
    events: EventStore
    recorder: GroupRecorder
    sessions: SessionStore
    broker_url: str
    owner: str
    pool: ThreadPoolExecutor
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplayService:
        database = connect(settings)
        events = EventStore(database[EVENTS])
        events.ensure_indexes()
        sessions = SessionStore(database)
        sessions.ensure_indexes()
        return cls(
            events=events,
            recorder=GroupRecorder(events.collection),
            sessions=sessions,
            broker_url=settings.k_sink,
            owner=f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
            pool=ThreadPoolExecutor(MAX_RUNNING_SESSIONS, thread_name_prefix="replay"),
        )

    def handle(self, event: IncomingEvent) -> list[Emission]:
        attributes = {
            "id": event.id,
            "source": event.source,
            "type": event.type,
            **event.extensions,
        }
        if event.subject is not None:
            attributes["subject"] = event.subject
        if event.time is not None:
            attributes["time"] = event.time.isoformat()
        self.recorder.record(stored_event(attributes, event.data, self.clock()))
        if event.is_replay:
            return []
        if isinstance(event.payload, ReplayRequested):
            self.sessions.create(session_from_request(event.payload, self.clock()))
            self.resume(event.payload.session_id)
        elif isinstance(event.payload, PingTick):
            self.resume(None)
        return []

    def resume(self, session_id: str | None) -> None:
        """Claim a session (this one, or any pending or orphaned) and run it in the background."""
        session = self.sessions.claim(session_id, self.owner, self.clock(), LEASE)
        if session is not None:
            self.pool.submit(self._run, session)

    def _run(self, session: Session) -> None:
        target = self.broker_url if session.target == "broker" else session.target
        with HttpSender(self.broker_url) as broker, HttpSender(target) as sink:
            announce = Emitter("replay", broker)
            announce.emit(_phase(session, "started"), cause=f"replay/{session.id}")

            def send(_: Session, event: OutgoingEvent) -> None:
                sink.send(event)

            try:
                runner = SessionRunner(self.events, self.sessions, send, owner=self.owner)
                ended = runner.run(session)
            except Exception:
                log.exception("replay %s failed; it resumes after its lease", session.id)
                return
            announce.emit(_phase(ended, "finished"), cause=f"replay/{session.id}")


def _phase(session: Session, phase: str) -> ReplaySession:
    state = session.state.value if phase == "finished" else "running"
    return ReplaySession(
        session_id=session.id,
        phase="started" if phase == "started" else "finished",
        state=state,
        matched=session.matched,
        emitted=session.emitted,
    )
