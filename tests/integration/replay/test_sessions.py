from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from execmesh.events import ReplayRequested
from execmesh.mesh.emission import OutgoingEvent
from execmesh.replay.eventstore import EventStore, stored_event
from execmesh.replay.runner import LEASE, SessionRunner
from execmesh.replay.sessions import Session, SessionState, SessionStore, session_from_request
from tests.support.threads import race

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TYPES = [
    "io.execmesh.execution.requested",
    "io.execmesh.execution.accepted",
    "io.execmesh.pod.created",
    "io.execmesh.execution.completed",
]


@pytest.fixture
def events(mongo_database: Database[dict[str, Any]]) -> EventStore:
    store = EventStore(mongo_database["events"])
    store.ensure_indexes()
    return store


@pytest.fixture
def sessions(mongo_database: Database[dict[str, Any]]) -> SessionStore:
    store = SessionStore(mongo_database)
    store.ensure_indexes()
    return store


def record_timeline(events: EventStore, execution: str, gap: timedelta) -> None:
    for n, ce_type in enumerate(TYPES):
        attributes = {
            "specversion": "1.0",
            "id": f"{execution}-{n}",
            "source": "/execmesh/test",
            "type": ce_type,
            "subject": execution,
            "partitionkey": execution,
            "time": (T0 + gap * n).isoformat(),
        }
        events.record(stored_event(attributes, {"execution_id": execution, "n": n}, T0))


def start(sessions: SessionStore, session_id: str = "s1", **request: Any) -> Session:
    session = session_from_request(
        ReplayRequested(session_id=session_id, **request), datetime.now(UTC)
    )
    assert sessions.create(session)
    claimed = sessions.claim(session_id, "a", datetime.now(UTC), LEASE)
    assert claimed is not None
    return claimed


def test_a_replay_reproduces_one_executions_timeline_in_order_marked_as_replayed(
    events: EventStore, sessions: SessionStore
) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=1))
    record_timeline(events, "exec-b", timedelta(seconds=1))
    sent: list[OutgoingEvent] = []
    runner = SessionRunner(events, sessions, lambda _, e: sent.append(e), owner="a")
    runner.run(start(sessions, execution_ids=("exec-a",), batch_size=3))
    assert [e.type for e in sent] == TYPES
    assert {e.extensions["replayedfrom"] for e in sent} == {f"exec-a-{n}" for n in range(4)}
    assert {e.extensions["replaysession"] for e in sent} == {"s1"}
    assert all(e.id != e.extensions["replayedfrom"] for e in sent)
    done = sessions.get("s1")
    assert done is not None and (done.state, done.emitted) == (SessionState.FINISHED, 4)


def test_a_dry_run_counts_what_the_real_run_emits_and_emits_nothing(
    events: EventStore, sessions: SessionStore
) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=1))
    record_timeline(events, "exec-b", timedelta(seconds=1))
    sent: list[OutgoingEvent] = []
    runner = SessionRunner(events, sessions, lambda _, e: sent.append(e), owner="a")
    dry = runner.run(start(sessions, exclude_types=("io.execmesh.pod.created",), dry_run=True))
    assert sent == []
    assert len(dry.preview) == dry.matched == 6
    real = runner.run(start(sessions, "s2", exclude_types=("io.execmesh.pod.created",)))
    assert real.emitted == len(sent) == dry.matched


def test_at_speed_ten_the_gaps_shrink_tenfold(events: EventStore, sessions: SessionStore) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=3))  # 9 s of history
    sent_at: list[float] = []
    runner = SessionRunner(
        events, sessions, lambda _, e: sent_at.append(time.monotonic()), owner="a"
    )
    runner.run(start(sessions, speed=10.0))
    elapsed = sent_at[-1] - sent_at[0]
    assert 0.8 <= elapsed <= 2.0, elapsed  # at speed 1 it would be 9 s


def test_a_cancel_stops_a_running_session_and_max_count_bounds_it(
    events: EventStore, sessions: SessionStore
) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=1))
    sent: list[OutgoingEvent] = []

    def send_then_cancel(session: Session, event: OutgoingEvent) -> None:
        sent.append(event)
        sessions.cancel(session.id)

    runner = SessionRunner(events, sessions, send_then_cancel, owner="a")
    runner.run(start(sessions, batch_size=1))
    assert len(sent) == 1
    assert sessions.get("s1").state is SessionState.CANCELLED  # type: ignore[union-attr]


def test_a_session_whose_runner_died_is_resumed_from_its_last_checkpoint(
    events: EventStore, sessions: SessionStore
) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=1))
    sent: list[OutgoingEvent] = []

    class Crash(Exception):
        pass

    def send_then_crash(session: Session, event: OutgoingEvent) -> None:
        sent.append(event)
        if len(sent) == 3:
            raise Crash

    with pytest.raises(Crash):
        SessionRunner(events, sessions, send_then_crash, owner="a").run(
            start(sessions, batch_size=2)
        )
    assert sessions.claim(None, "b", datetime.now(UTC), LEASE) is None  # lease still held
    later = datetime.now(UTC) + LEASE + timedelta(seconds=1)
    resumed = sessions.claim(None, "b", later, LEASE)
    assert resumed is not None and resumed.emitted == 2
    SessionRunner(events, sessions, lambda _, e: sent.append(e), owner="b").run(resumed)
    # The event in flight at the crash is sent again, with the same replay id.
    assert [e.extensions["replayedfrom"] for e in sent] == [
        "exec-a-0",
        "exec-a-1",
        "exec-a-2",
        "exec-a-2",
        "exec-a-3",
    ]
    assert sent[2].id == sent[3].id


def test_pause_then_resume_continues_without_replaying_the_pause_as_a_gap(
    events: EventStore, sessions: SessionStore
) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=1))
    sent: list[OutgoingEvent] = []

    def send_then_pause(session: Session, event: OutgoingEvent) -> None:
        sent.append(event)
        if len(sent) == 2:
            sessions.pause(session.id)

    SessionRunner(events, sessions, send_then_pause, owner="a").run(start(sessions, batch_size=2))
    assert sessions.get("s1").state is SessionState.PAUSED  # type: ignore[union-attr]
    assert sessions.resume("s1", datetime.now(UTC))
    resumed = sessions.claim("s1", "a", datetime.now(UTC), LEASE)
    assert resumed is not None
    SessionRunner(events, sessions, lambda _, e: sent.append(e), owner="a").run(resumed)
    assert len(sent) == 4


def test_replicas_racing_to_claim_a_session_give_it_to_exactly_one(
    sessions: SessionStore,
) -> None:
    # FerretDB's find_one_and_update is not atomic: the old claim gave 46 claims of 10 sessions.
    now = datetime.now(UTC)
    for n in range(10):
        sessions.create(session_from_request(ReplayRequested(session_id=f"s{n}"), now))
    claims: list[tuple[str, str]] = []

    def claim_all(n: int) -> None:
        for _ in range(10):
            claimed = sessions.claim(None, f"replica-{n}", now, LEASE)
            if claimed is not None:
                claims.append((claimed.id, f"replica-{n}"))

    race(6, claim_all)
    assert sorted(session_id for session_id, _ in claims) == sorted(f"s{n}" for n in range(10))
    for session_id, owner in claims:
        assert sessions.get(session_id).owner == owner  # type: ignore[union-attr]


def test_a_pause_racing_a_runners_checkpoints_is_never_undone(
    sessions: SessionStore,
) -> None:
    claimed = start(sessions)
    stop = threading.Event()

    def keep_checkpointing(_: int) -> None:
        progress = claimed
        while not stop.is_set():
            progress = replace(progress, emitted=progress.emitted + 1)
            if sessions.checkpoint(progress, "a", datetime.now(UTC), LEASE) is None:
                return

    runner = threading.Thread(target=keep_checkpointing, args=(0,))
    runner.start()
    time.sleep(0.05)
    assert sessions.pause("s1")
    time.sleep(0.2)
    stop.set()
    runner.join(timeout=10)
    paused = sessions.get("s1")
    assert paused is not None and paused.state is SessionState.PAUSED
    assert paused.emitted > 0  # progress made before the pause is kept


def test_a_long_wait_notices_a_pause_within_a_second_without_a_version_per_second(
    events: EventStore, sessions: SessionStore
) -> None:
    record_timeline(events, "exec-a", timedelta(seconds=60))
    sent: list[OutgoingEvent] = []
    runner = SessionRunner(events, sessions, lambda _, e: sent.append(e), owner="a")
    claimed = start(sessions, speed=1.0)
    worker = threading.Thread(target=runner.run, args=(claimed,))
    worker.start()
    time.sleep(3.0)
    assert sessions.pause("s1")
    paused_at = time.monotonic()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - paused_at < 2.5  # the sleep until the next event is 60 s
    assert len(sent) == 1
    # Create, claim, pause: the lease (30 s) was not renewed every second of the wait.
    assert sessions.documents.versions.count_documents({"key": "s1"}) <= 4
