from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from pymongo.database import Database

from execmesh.deadletters.letter import DeadLetter, State, from_cloud_event
from execmesh.deadletters.policy import RetryPolicy
from execmesh.deadletters.retrier import CLAIM_LEASE, Attempt, redeliver, retry_due
from execmesh.deadletters.store import DeadLetterStore
from tests.support.http_sink import serving_posts
from tests.support.threads import race

pytestmark = pytest.mark.services

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAST = RetryPolicy(3, timedelta(seconds=1), timedelta(seconds=4), jitter=0)


class Sink:
    """A subscriber that fails the first ``failures`` deliveries, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[dict[str, str]] = []


@pytest.fixture
def sink_server() -> Iterator[tuple[str, Sink]]:
    sink = Sink(failures=0)

    def answer(headers: dict[str, str], body: bytes) -> int:
        status = 500 if sink.failures > 0 else 202
        sink.failures -= 1
        sink.received.append(headers)
        return status

    with serving_posts(answer) as url:
        yield url, sink


@pytest.fixture
def store(mongo_database: Database[dict[str, Any]]) -> DeadLetterStore:
    store = DeadLetterStore(mongo_database)
    store.ensure_indexes()
    return store


def letter_to(destination: str, event_id: str = "e1") -> DeadLetter:
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/execmesh/test",
        "type": "io.execmesh.pod.created",
        "datacontenttype": "application/json",
        "knativeerrordest": destination,
        "knativeerrorcode": "500",
    }
    return from_cloud_event(attributes, {"execution_id": "x1"}, NOW)


def test_a_dead_letter_is_stored_once_however_often_it_arrives(store: DeadLetterStore) -> None:
    assert store.add(letter_to("http://a/")) is True
    assert store.add(letter_to("http://a/")) is False
    assert len(store.find()) == 1


def test_a_retry_delivers_the_original_event_with_its_original_id(
    store: DeadLetterStore, sink_server: tuple[str, Sink]
) -> None:
    url, sink = sink_server
    store.add(letter_to(url))
    with httpx.Client() as client:
        parked = retry_due(
            store, partial(redeliver, client), lambda _: FAST, now=NOW, rng=random.Random(1)
        )
    assert parked == []
    [received] = sink.received
    assert received["ce-id"] == "e1"
    assert "ce-knativeerrordest" not in received
    [letter] = store.find()
    assert (letter.state, letter.attempts) == (State.DELIVERED, 1)


def test_a_letter_that_keeps_failing_is_retried_with_backoff_then_parked(
    store: DeadLetterStore, sink_server: tuple[str, Sink]
) -> None:
    url, sink = sink_server
    sink.failures = 100
    store.add(letter_to(url))
    rng = random.Random(1)
    now = NOW
    parked: list[DeadLetter] = []
    with httpx.Client() as client:
        for _ in range(6):
            parked += retry_due(store, partial(redeliver, client), lambda _: FAST, now=now, rng=rng)
            letter = store.find()[0]
            now = max(now, letter.next_attempt_at)
    assert len(sink.received) == FAST.max_attempts
    assert [p.event_id for p in parked] == ["e1"]
    letter = store.find()[0]
    assert letter.state is State.PARKED
    assert "HTTP 500" in letter.last_error
    assert [h["attempt"] for h in letter.history] == [1, 2, 3]


def test_a_letter_is_not_retried_before_its_backoff_has_passed(
    store: DeadLetterStore, sink_server: tuple[str, Sink]
) -> None:
    url, sink = sink_server
    sink.failures = 1
    store.add(letter_to(url))
    with httpx.Client() as client:
        deliver = partial(redeliver, client)
        retry_due(store, deliver, lambda _: FAST, now=NOW, rng=random.Random(1))
        retry_due(
            store,
            deliver,
            lambda _: FAST,
            now=NOW + timedelta(milliseconds=1500),
            rng=random.Random(1),
        )
        assert len(sink.received) == 1
        retry_due(
            store, deliver, lambda _: FAST, now=NOW + timedelta(seconds=2), rng=random.Random(1)
        )
    assert len(sink.received) == 2
    assert store.find()[0].state is State.DELIVERED


def test_a_claim_abandoned_by_a_crash_is_taken_again_after_its_lease(
    store: DeadLetterStore,
) -> None:
    store.add(letter_to("http://unused/"))
    [claimed] = store.claim_due(NOW, CLAIM_LEASE, limit=10)
    assert store.claim_due(NOW + timedelta(seconds=1), CLAIM_LEASE, limit=10) == []
    [reclaimed] = store.claim_due(NOW + CLAIM_LEASE, CLAIM_LEASE, limit=10)
    assert reclaimed.id == claimed.id
    assert store.settle(reclaimed, state=State.DELIVERED, outcome="ok", now=NOW) is True
    # The crashed claimer coming back late must not count its attempt a second time.
    assert store.settle(claimed, state=State.PARKED, outcome="late", now=NOW) is False
    letter = store.find()[0]
    assert (letter.state, letter.attempts) == (State.DELIVERED, 1)


def test_retry_now_and_discard_are_admin_operations(store: DeadLetterStore) -> None:
    store.add(letter_to("http://a/", "e1"))
    store.add(letter_to("http://a/", "e2"))
    [claimed] = store.claim_due(NOW, CLAIM_LEASE, limit=1)
    store.settle(claimed, state=State.PARKED, outcome="boom", now=NOW)
    assert store.retry_now({"attributes.type": "io.execmesh.pod.created"}, NOW) == 2
    assert {letter.state for letter in store.find()} == {State.PENDING}
    assert store.discard(claimed.id) is True
    assert store.get(claimed.id).state is State.DISCARDED  # type: ignore[union-attr]
    assert store.retry_now({"_id": claimed.id}, NOW) == 0


def test_redeliver_reports_an_unreachable_destination_as_a_failure() -> None:
    with httpx.Client(timeout=1) as client:
        attempt = redeliver(client, letter_to("http://127.0.0.1:9/"))
    assert attempt == Attempt(False, attempt.outcome)
    assert "ConnectError" in attempt.outcome


def test_dlq_replicas_racing_for_due_letters_claim_each_exactly_once(
    store: DeadLetterStore,
) -> None:
    # FerretDB's find_one_and_update is not atomic: the old claim gave 28 claims of 10 letters.
    for n in range(8):
        store.add(letter_to("http://unused/", f"e{n}"))
    claimed: list[str] = []
    race(6, lambda _: claimed.extend(x.id for x in store.claim_due(NOW, CLAIM_LEASE, 8)))
    assert len(claimed) == 8
    assert len(set(claimed)) == 8


def test_two_settles_of_one_claim_count_one_attempt(store: DeadLetterStore) -> None:
    store.add(letter_to("http://unused/"))
    [claimed] = store.claim_due(NOW, CLAIM_LEASE, limit=1)
    won: list[bool] = []
    race(
        6, lambda n: won.append(store.settle(claimed, state=State.PENDING, outcome=f"{n}", now=NOW))
    )
    assert sorted(won) == [False] * 5 + [True]
    assert store.find()[0].attempts == 1


def test_a_round_out_of_time_claims_no_more_letters(store: DeadLetterStore) -> None:
    store.add(letter_to("http://unused/", "e1"))
    store.add(letter_to("http://unused/", "e2"))
    delivered: list[str] = []

    def deliver(letter: DeadLetter) -> Attempt:
        delivered.append(letter.event_id)
        return Attempt(True, "ok")

    retry_due(
        store,
        deliver,
        lambda _: FAST,
        now=NOW,
        rng=random.Random(1),
        time_left=lambda: not delivered,
    )
    assert len(delivered) == 1
    assert sorted(letter.state for letter in store.find()) == [State.DELIVERED, State.PENDING]
