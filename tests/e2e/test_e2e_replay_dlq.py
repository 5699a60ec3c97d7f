"""Replay and dead letters through the running mesh: broker, replay, dlq, the pipeline.

A tiny local subscriber (127.0.0.1:20101) stands behind Triggers added to the mesh's own
eventing copy: ``/poison`` fails until the test fixes it, ``/doomed`` always fails, ``/flaky``
fails a few times per event; ``/sink`` is where replays are sent. The dlq's retry delays are
scaled to a hundredth (EXECMESH_DLQ_DELAY_SCALE), so its policies run in seconds; the dlq
still retries only on the ping (every second here).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from execmesh.deadletters.letter import DeadLetter, State, dead_letter_id
from execmesh.deadletters.policy import policy_for
from execmesh.deadletters.store import DeadLetterStore
from execmesh.events import ReplayRequested
from execmesh.mesh.emission import OutgoingEvent, to_binary_http
from execmesh.mesh.sender import HttpSender
from execmesh.pods.runtimes import available
from execmesh.replay.eventstore import EventFilter, EventStore, StoredEvent
from execmesh.replay.sessions import Session, SessionState, SessionStore
from tests.e2e.mesh import Mesh, start_mesh

pytestmark = [pytest.mark.services, pytest.mark.e2e]

T = TypeVar("T")
SUBSCRIBER_PORT = 20101
SUBSCRIBER = f"http://127.0.0.1:{SUBSCRIBER_PORT}"
SINK = f"{SUBSCRIBER}/sink"
SOURCE = "/e2e/replay-dlq"
POISON = "io.execmesh.test.poison"
DOOMED = "io.execmesh.test.doomed"
FLAKY = "io.execmesh.test.flaky"
# /flaky fails this many deliveries of each event: the trigger's 3, then the dlq's first 3.
FLAKY_FAILURES = 6
TRIGGERS = "\n---\n".join(
    f"""apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: e2e-{name}
spec:
  broker: default
  filter:
    attributes:
      type: io.execmesh.test.{name}
  subscriber:
    uri: {SUBSCRIBER}/{name}
  delivery:
    retry: 2
    backoffPolicy: linear
    backoffDelay: PT0.1S
"""
    for name in ("poison", "doomed", "flaky")
)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    status: int
    at: float

    @property
    def id(self) -> str:
        return self.headers.get("ce-id", "")

    @property
    def from_broker(self) -> bool:
        # The broker asks for a reply; the dlq's redelivery does not.
        return self.headers.get("prefer") == "reply"


@dataclass
class Subscriber:
    failing: set[str] = field(default_factory=lambda: {"poison"})
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: dict[str, str]) -> int:
        with self.lock:
            name = path.strip("/")
            tries = sum(1 for r in self.received if r.path == path and r.id == headers["ce-id"])
            fails = (
                name == "doomed"
                or name in self.failing
                or (name == "flaky" and tries < FLAKY_FAILURES)
            )
            status = 500 if fails else 202
            self.received.append(Received(path, headers, status, time.monotonic()))
            return status

    def at(self, path: str, event_id: str | None = None) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.received
                if r.path == path and (event_id is None or r.id == event_id)
            ]


@pytest.fixture(scope="module")
def subscriber() -> Iterator[Subscriber]:
    subscriber = Subscriber()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = subscriber.answer(self.path, headers)
            body = b"" if status < 300 else f"poisoned at {self.path}".encode()
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", SUBSCRIBER_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield subscriber
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, subscriber: Subscriber) -> Iterator[Mesh]:
    root: Path = tmp_path_factory.mktemp("replay-dlq-mesh")
    # No namespace: the broker puts these Triggers in the mesh's own.
    (root / "eventing" / "triggers").mkdir(parents=True)
    (root / "eventing" / "triggers" / "e2e-subscribers.yaml").write_text(TRIGGERS)
    # THREADS as functions/replay/func.yaml sets it (the recorder's requests wait for its
    # shared insert); here every function of this mesh gets it, which none minds.
    yield from start_mesh(
        root, port_offset=13000, redis_db=12, EXECMESH_DLQ_DELAY_SCALE="0.01", THREADS="64"
    )


@pytest.fixture
def letters(mesh: Mesh) -> DeadLetterStore:
    return DeadLetterStore(mesh.database)


@pytest.fixture
def events(mesh: Mesh) -> EventStore:
    return EventStore(mesh.database["events"])


@pytest.fixture
def sessions(mesh: Mesh) -> SessionStore:
    return SessionStore(mesh.database)


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def event(ce_type: str, subject: str | None = None, **data: Any) -> OutgoingEvent:
    extensions = {} if subject is None else {"partitionkey": subject}
    return OutgoingEvent(
        id=uuid.uuid4().hex,
        type=ce_type,
        source=SOURCE,
        data=data,
        time=datetime.now(UTC),
        subject=subject,
        extensions=extensions,
    )


def post(mesh: Mesh, outgoing: OutgoingEvent) -> OutgoingEvent:
    with HttpSender(mesh.local.broker_url) as sender:
        sender.send(outgoing)
    return outgoing


def letter_of(letters: DeadLetterStore, sent: OutgoingEvent, path: str) -> DeadLetter | None:
    return letters.get(dead_letter_id(SOURCE, sent.id, f"{SUBSCRIBER}{path}"))


def finished(sessions: SessionStore, session_id: str, timeout: float = 30) -> Session:
    def probe() -> Session | None:
        session = sessions.get(session_id)
        return session if session and session.state is SessionState.FINISHED else None

    return wait_until(probe, timeout, f"replay session {session_id} finished")


def matching(found: T | None, condition: Callable[[T], bool]) -> T | None:
    return found if found is not None and condition(found) else None


def at_least(items: list[T], count: int) -> list[T] | None:
    return items if len(items) >= count else None


def replay(mesh: Mesh, **request: Any) -> str:
    session_id = uuid.uuid4().hex[:16]
    mesh.emit(ReplayRequested(session_id=session_id, **request))
    return session_id


def sunk(subscriber: Subscriber, session_id: str) -> list[Received]:
    return [r for r in subscriber.at("/sink") if r.headers.get("ce-replaysession") == session_id]


# --- dead letters -------------------------------------------------------------------------


def test_a_poison_event_is_dead_lettered_with_its_error_and_once_fixed_a_retry_delivers_it_once(
    mesh: Mesh, subscriber: Subscriber, letters: DeadLetterStore
) -> None:
    sent = post(mesh, event(POISON, n=1))
    letter = wait_until(lambda: letter_of(letters, sent, "/poison"), 30, "the dead letter")
    # The trigger's own attempts came first: 1 + retry 2, then the broker gave up.
    assert len([r for r in subscriber.at("/poison", sent.id) if r.from_broker]) == 3
    assert (letter.destination, letter.error_code) == (f"{SUBSCRIBER}/poison", 500)
    assert letter.error_data == "poisoned at /poison"
    assert (letter.event_id, letter.event_type, letter.data) == (sent.id, POISON, {"n": 1})

    subscriber.failing.discard("poison")
    wait_until(
        lambda: matching(letters.get(letter.id), lambda f: f.state is State.DELIVERED),
        30,
        "the retried letter delivered",
    )
    time.sleep(2.5)  # two more ticks: a delivered letter is never sent again
    accepted = [r for r in subscriber.at("/poison", sent.id) if r.status == 202]
    assert len(accepted) == 1
    [redelivery] = accepted
    assert not redelivery.from_broker
    assert (redelivery.headers["ce-type"], redelivery.headers["ce-source"]) == (POISON, SOURCE)
    assert not any(h.startswith("ce-knativeerror") for h in redelivery.headers)


def test_a_letter_that_keeps_failing_is_parked_after_its_policy_and_dlq_parked_is_emitted(
    mesh: Mesh, subscriber: Subscriber, letters: DeadLetterStore
) -> None:
    sent = post(mesh, event(DOOMED, n=2))
    parked = wait_until(
        lambda: matching(letter_of(letters, sent, "/doomed"), lambda f: f.state is State.PARKED),
        60,
        "the letter parked",
    )
    attempts = policy_for(DOOMED).max_attempts
    assert parked.attempts == attempts
    assert [h["attempt"] for h in parked.history] == list(range(1, attempts + 1))
    assert "HTTP 500" in parked.last_error
    retries = [r for r in subscriber.at("/doomed", sent.id) if not r.from_broker]
    assert len(retries) == attempts
    recorded = mesh.database["events"]
    notice = wait_until(
        lambda: recorded.find_one(
            {"type": "io.execmesh.dlq.parked", "data.dead_letter_id": parked.id}
        ),
        20,
        "dlq.parked recorded",
    )
    assert notice["data"]["original_id"] == sent.id
    assert notice["data"]["attempts"] == attempts
    assert notice["data"]["destination"] == f"{SUBSCRIBER}/doomed"


def test_a_dlq_killed_in_the_middle_of_retries_loses_and_duplicates_nothing(
    mesh: Mesh, subscriber: Subscriber, letters: DeadLetterStore
) -> None:
    sent = [post(mesh, event(FLAKY, n=n)) for n in range(8)]

    def all_retried_once() -> list[DeadLetter] | None:
        found = [letter_of(letters, s, "/flaky") for s in sent]
        if all(f is not None and f.attempts >= 1 for f in found):
            return [f for f in found if f is not None]
        return None

    mid = wait_until(all_retried_once, 40, "every flaky letter retried at least once")
    assert any(f.state is not State.DELIVERED for f in mid), "killed too late to prove anything"
    mesh.kill("dlq")  # SIGKILL, whatever it is doing
    time.sleep(1.0)
    mesh.start("dlq")
    mesh.wait_ready()

    def all_delivered() -> list[DeadLetter] | None:
        found = [letter_of(letters, s, "/flaky") for s in sent]
        if all(f is not None and f.state is State.DELIVERED for f in found):
            return [f for f in found if f is not None]
        return None

    # A letter claimed at the kill waits out its lease (15 s) before its next retry.
    done = wait_until(all_delivered, 60, "every flaky letter delivered after the restart")
    time.sleep(2.5)
    accepted = Counter(r.id for r in subscriber.at("/flaky") if r.status == 202)
    assert accepted == Counter({s.id: 1 for s in sent})
    # An attempt cut short by the kill is made again, and counted once.
    assert all(1 <= f.attempts <= FLAKY_FAILURES - 3 + 1 for f in done), done
    assert letters.documents.heads.count_documents({"destination": f"{SUBSCRIBER}/flaky"}) == 8


# --- replay -------------------------------------------------------------------------------

PYTHON = next((r.version for r in available("local") if r.language == "python"), "")


@pytest.fixture(scope="module")
def one_run(mesh: Mesh) -> tuple[str, list[StoredEvent], dict[str, Any]]:
    """One real execution, and its timeline once the recorder has all of it."""
    execution_id = mesh.submit("python", PYTHON, 'print("once")')
    document = mesh.wait_for(execution_id, timeout=120)
    assert document["status"] == "completed", document
    store = EventStore(mesh.database["events"])
    selection = EventFilter(execution_ids=[execution_id])

    def settled() -> list[StoredEvent] | None:
        timeline = list(store.iterate(selection))
        types = {e.type for e in timeline}
        if {"io.execmesh.result.stored", "io.execmesh.pod.deleted"} <= types:
            time.sleep(1.0)
            again = list(store.iterate(selection))
            return again if len(again) == len(timeline) else None
        return None

    return execution_id, wait_until(settled, 60, "the run's timeline recorded"), document


@pytest.mark.node
def test_replay_reproduces_one_executions_timeline_in_order_and_marked(
    mesh: Mesh,
    subscriber: Subscriber,
    sessions: SessionStore,
    one_run: tuple[str, list[StoredEvent], dict[str, Any]],
) -> None:
    execution_id, timeline, _ = one_run
    assert len(timeline) >= 8  # requested, accepted, pod.*, completed, result.stored, ...
    dry_id = replay(mesh, execution_ids=(execution_id,), dry_run=True)
    dry = finished(sessions, dry_id)
    assert sunk(subscriber, dry_id) == []

    session_id = replay(mesh, execution_ids=(execution_id,), target=SINK)
    real = finished(sessions, session_id)
    received = wait_until(
        lambda: at_least(sunk(subscriber, session_id), len(timeline)),
        10,
        "every replayed event at the sink",
    )
    assert dry.matched == real.emitted == len(received) == len(timeline)
    assert [r.headers["ce-type"] for r in received] == [e.type for e in timeline]
    assert [r.headers["ce-replayedfrom"] for r in received] == [e.id for e in timeline]
    assert all(r.headers["ce-id"] != r.headers["ce-replayedfrom"] for r in received)
    assert all("ce-replayreprocess" not in r.headers for r in received)


@pytest.mark.node
def test_a_replay_through_the_broker_starts_no_second_run(
    mesh: Mesh,
    sessions: SessionStore,
    events: EventStore,
    one_run: tuple[str, list[StoredEvent], dict[str, Any]],
) -> None:
    execution_id, timeline, document = one_run
    session_id = replay(mesh, execution_ids=(execution_id,))
    finished(sessions, session_id)
    everything = EventFilter(execution_ids=[execution_id], include_replayed=True)
    pods_seen: list[str] = []
    deadline = time.monotonic() + 5  # the pipeline's chance to (wrongly) start a second run
    while time.monotonic() < deadline:
        pods_seen += [p["metadata"]["name"] for p in mesh.pods() if execution_id in str(p)]
        time.sleep(0.25)

    def recorded_copies() -> list[StoredEvent] | None:
        recorded = list(events.iterate(everything))
        copies = [e for e in recorded if e.extensions.get("replaysession") == session_id]
        return recorded if len(copies) >= len(timeline) else None

    # The recorder hears the copies through the broker, after the session has finished.
    recorded = wait_until(recorded_copies, 30, "every replayed copy recorded")
    originals = [e for e in recorded if "replaysession" not in e.extensions]
    copies = [e for e in recorded if e.extensions.get("replaysession") == session_id]
    assert [e.id for e in originals] == [e.id for e in timeline]  # nothing new happened
    assert sorted(e.extensions.get("replayedfrom", "") for e in copies) == sorted(
        e.id for e in timeline
    )  # every copy is a replayed original; a reaction would carry the session too
    assert pods_seen == []
    after = mesh.execution(execution_id)
    assert after is not None and after["result"] == document["result"]


def test_at_speed_ten_a_replay_takes_a_tenth_of_the_original_gaps(
    mesh: Mesh, subscriber: Subscriber, sessions: SessionStore, events: EventStore
) -> None:
    timeline_id = f"paced-{uuid.uuid4().hex[:8]}"
    for gap in (0.0, 1.0, 2.5, 2.5):
        time.sleep(gap)
        post(mesh, event("io.execmesh.test.paced", subject=timeline_id))
    selection = EventFilter(execution_ids=[timeline_id])
    stored = wait_until(
        lambda: at_least(list(events.iterate(selection)), 4),
        20,
        "the paced timeline recorded",
    )
    session_id = replay(mesh, execution_ids=(timeline_id,), target=SINK, speed=10.0)
    finished(sessions, session_id)
    received = sunk(subscriber, session_id)
    assert len(received) == 4
    original = [(e.time - stored[0].time).total_seconds() for e in stored]
    replayed = [r.at - received[0].at for r in received]
    print(f"\nat speed 10: original offsets {original}, replayed {replayed}")
    # Each event within 0.5 s of its tenth (a busy 2-core box stalls a process that long),
    # and the whole replay about a tenth of the original: ASAP would be ~0, speed 1 would be
    # 6 s (a ratio of 1).
    for before, now in zip(original, replayed, strict=True):
        assert abs(now - before / 10) < 0.5, (original, replayed)
    assert 0.08 <= replayed[-1] / original[-1] <= 0.3, (original, replayed)


# --- admin CLI ----------------------------------------------------------------------------


def cli(mesh: Mesh, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "execmesh"), *argv]
    return subprocess.run(command, env=mesh.env, capture_output=True, text=True, timeout=60)


def test_the_dlq_admin_commands_list_show_retry_and_discard_in_the_running_mesh(
    mesh: Mesh, subscriber: Subscriber, letters: DeadLetterStore
) -> None:
    sent = post(mesh, event(DOOMED, n=3))
    parked = wait_until(
        lambda: matching(letter_of(letters, sent, "/doomed"), lambda f: f.state is State.PARKED),
        60,
        "the letter parked",
    )
    listing = cli(mesh, "dlq", "list", "--type", DOOMED, "--state", "parked")
    assert listing.returncode == 0 and parked.id in listing.stdout, listing
    shown = cli(mesh, "dlq", "show", parked.id)
    assert shown.returncode == 0 and sent.id in shown.stdout and "HTTP 500" in shown.stdout
    retried = cli(mesh, "dlq", "retry", parked.id)
    assert retried.returncode == 0 and "1 due now" in retried.stdout, retried
    again = wait_until(
        lambda: matching(
            letters.get(parked.id),
            lambda f: f.state is State.PARKED and f.attempts > parked.attempts,
        ),
        30,
        "the retried letter parked again",
    )
    assert again.attempts == parked.attempts + 1
    everything = cli(mesh, "dlq", "retry-all", "--type", DOOMED)
    assert everything.returncode == 0 and "due now" in everything.stdout
    wait_until(
        lambda: matching(
            letters.get(parked.id),
            lambda f: f.state is State.PARKED and f.attempts > again.attempts,
        ),
        30,
        "parked once more",
    )
    assert cli(mesh, "dlq", "discard", parked.id).returncode == 0
    assert letters.get(parked.id).state is State.DISCARDED  # type: ignore[union-attr]
    assert cli(mesh, "dlq", "show", "no-such-letter").returncode == 1


def test_the_replay_admin_commands_start_watch_pause_resume_and_cancel(
    mesh: Mesh, sessions: SessionStore, events: EventStore
) -> None:
    timeline_id = f"slow-{uuid.uuid4().hex[:8]}"
    post(mesh, event("io.execmesh.test.slow", subject=timeline_id))
    time.sleep(1.0)
    post(mesh, event("io.execmesh.test.slow", subject=timeline_id))
    selection = EventFilter(execution_ids=[timeline_id])
    wait_until(lambda: events.count(selection) == 2, 20, "the slow timeline recorded")

    dry = cli(mesh, "replay", "start", "--execution", timeline_id, "--dry-run")
    assert dry.returncode == 0, dry
    dry_id = dry.stdout.strip()
    assert finished(sessions, dry_id).matched == 2
    status = cli(mesh, "replay", "status", dry_id)
    assert status.returncode == 0 and '"matched": 2' in status.stdout
    assert dry_id in cli(mesh, "replay", "list").stdout

    # At speed 0.01 the second event is due 100 s after the first: time to steer it.
    slow = cli(
        mesh, "replay", "start", "--execution", timeline_id, "--target", SINK, "--speed", "0.01"
    )
    slow_id = slow.stdout.strip()
    wait_until(
        lambda: matching(
            sessions.get(slow_id), lambda s: s.state is SessionState.RUNNING and s.emitted == 1
        ),
        20,
        "the slow session running",
    )
    assert cli(mesh, "replay", "pause", slow_id).returncode == 0
    assert sessions.get(slow_id).state is SessionState.PAUSED  # type: ignore[union-attr]
    assert cli(mesh, "replay", "resume", slow_id).returncode == 0
    wait_until(
        lambda: matching(sessions.get(slow_id), lambda s: s.state is SessionState.RUNNING),
        20,
        "resumed and claimed again",
    )
    assert cli(mesh, "replay", "cancel", slow_id).returncode == 0
    assert sessions.get(slow_id).state is SessionState.CANCELLED  # type: ignore[union-attr]
    assert cli(mesh, "replay", "resume", slow_id).returncode == 1


# --- the recorder under a burst -----------------------------------------------------------

BURST = 10_000


def post_burst(url: str, outgoing: list[OutgoingEvent], concurrency: int) -> None:
    """POST every event to the broker ingress from ``concurrency`` threads at once."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=30, limits=limits) as client:

        def post_one(one: OutgoingEvent) -> int:
            headers, body = to_binary_http(one)
            return client.post(url, headers=headers, content=body).status_code

        with ThreadPoolExecutor(concurrency) as pool:
            statuses = Counter(pool.map(post_one, outgoing))
    assert statuses == Counter({202: len(outgoing)})


@pytest.mark.timeout(480)
def test_the_recorder_stores_every_event_of_a_ten_thousand_event_burst_exactly_once(
    mesh: Mesh,
) -> None:
    source = f"/e2e/burst/{uuid.uuid4().hex[:8]}"
    outgoing = [
        OutgoingEvent(
            id=f"burst-{n}",
            type="io.execmesh.test.burst",
            source=source,
            data={"n": n},
            time=datetime.now(UTC),
            subject=f"burst-{n % 100}",
            extensions={"partitionkey": f"burst-{n % 100}"},
        )
        for n in range(BURST)
    ]
    recorded = mesh.database["events"]
    started = time.monotonic()
    post_burst(mesh.local.broker_url, outgoing, concurrency=32)
    posted = time.monotonic() - started
    wait_until(
        lambda: recorded.count_documents({"source": source}) >= BURST, 300, "the burst recorded"
    )
    stored = time.monotonic() - started
    time.sleep(2.0)  # redeliveries, if any, would land by now
    assert recorded.count_documents({"source": source}) == BURST
    assert len(recorded.distinct("id", {"source": source})) == BURST
    print(
        f"\nburst of {BURST}: posted in {posted:.1f} s ({BURST / posted:.0f}/s), "
        f"recorded in {stored:.1f} s ({BURST / stored:.0f} events/s end to end)"
    )
