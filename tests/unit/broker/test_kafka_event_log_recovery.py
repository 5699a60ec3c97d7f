"""The event log replaces a producer that stops acknowledging, and never reports a record
stored unless Kafka acknowledged it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from execmesh.broker.kafka_binding import KafkaRecord
from execmesh.broker.kafka_io import KafkaEventLog, Producer, Settle, Watchdog
from execmesh.errors import TransientError

TOPIC = "knative-broker-test-default"
RECORD = KafkaRecord(b"k", b"{}", [("ce_id", b"1")])


@dataclass
class FakeProducer:
    """Acknowledges every record, or, wedged, none, as kafka-python's idempotent producer after
    it lost its producer id."""

    wedged: bool = False
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    known_topics: list[str] = field(default_factory=list)
    closed: bool = False

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        settle: Settle,
    ) -> None:
        self.sent.append((topic, value))
        if not self.wedged:
            settle(None)

    def partitions_for(self, topic: str) -> set[int]:
        self.known_topics.append(topic)
        return {0}

    def close(self, timeout: float) -> None:
        if self.wedged:
            # A wedged producer never completes the records it holds.
            raise TransientError("1 record(s) not acknowledged within 5s")
        self.closed = True


class Kafka:
    """Hands out producers: first a wedged one, then healthy ones once Kafka is `reachable`."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.producers: list[FakeProducer] = []

    def new_producer(self, bootstrap_timeout: float) -> Producer:
        if self.producers and not self.reachable:
            raise TransientError("Unable to bootstrap")
        producer = FakeProducer(wedged=not self.producers)
        self.producers.append(producer)
        return producer


def event_log(kafka: Kafka) -> KafkaEventLog:
    return KafkaEventLog(
        "unused:9092", ack_timeout=0.02, patience=0.1, new_producer=kafka.new_producer
    )


async def append_until_stored(log: KafkaEventLog, timeout: float) -> int:
    """Append until one append returns; how many were refused before."""
    refused = 0
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            await log.append(TOPIC, RECORD)
        except TransientError:
            refused += 1
            await asyncio.sleep(0.01)
            continue
        return refused
    raise AssertionError(f"nothing stored in {timeout}s ({refused} appends refused)")


def test_a_producer_that_acknowledges_nothing_is_replaced_and_appends_are_stored_again() -> None:
    kafka = Kafka()
    log = event_log(kafka)

    refused = asyncio.run(append_until_stored(log, timeout=5))

    wedged, fresh = kafka.producers
    assert refused >= 2 and len(wedged.sent) == refused
    assert fresh.sent == [(TOPIC, b"{}")]
    assert fresh.known_topics == [TOPIC]


def test_while_no_new_producer_can_reach_kafka_appends_are_refused_not_reported_stored() -> None:
    kafka = Kafka(reachable=False)
    log = event_log(kafka)

    async def append_for(seconds: float) -> list[str]:
        outcomes = []
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            try:
                await log.append(TOPIC, RECORD)
                outcomes.append("stored")
            except TransientError:
                outcomes.append("refused")
        return outcomes

    outcomes = asyncio.run(append_for(0.5))

    assert set(outcomes) == {"refused"}
    [wedged] = kafka.producers
    assert len(wedged.sent) == len(outcomes)


def test_closing_the_log_while_its_producer_is_wedged_does_not_raise() -> None:
    kafka = Kafka()
    log = event_log(kafka)
    log.close()
    [wedged] = kafka.producers
    assert not wedged.closed


def test_a_producer_replaced_after_kafka_came_back_stores_the_next_append() -> None:
    kafka = Kafka(reachable=False)
    log = event_log(kafka)

    async def outage_then_back() -> int:
        with pytest.raises(TransientError):
            await log.append(TOPIC, RECORD)
        await asyncio.sleep(0.2)
        kafka.reachable = True
        return await append_until_stored(log, timeout=5)

    asyncio.run(outage_then_back())

    assert [p.wedged for p in kafka.producers] == [True, False]
    assert kafka.producers[1].sent == [(TOPIC, b"{}")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_waits_for_its_patience_of_failures_before_a_replacement() -> None:
    clock = Clock()
    watchdog = Watchdog(patience=10, clock=clock)
    decisions = []
    for now in (100, 105, 109.9, 110):
        clock.now = now
        decisions.append(watchdog.failed())
    assert decisions == [False, False, False, True]


def test_an_acknowledgement_starts_the_watchdogs_patience_over() -> None:
    clock = Clock()
    watchdog = Watchdog(patience=10, clock=clock)
    watchdog.failed()
    clock.now = 108
    watchdog.acknowledged()
    clock.now = 112
    assert not watchdog.failed()
    clock.now = 122
    assert watchdog.failed()


def test_the_watchdog_allows_one_replacement_per_patience() -> None:
    clock = Clock()
    watchdog = Watchdog(patience=10, clock=clock)
    watchdog.failed()
    clock.now = 110
    assert watchdog.failed()
    watchdog.replacing()
    clock.now = 115
    assert not watchdog.failed()
    clock.now = 120
    assert watchdog.failed()
