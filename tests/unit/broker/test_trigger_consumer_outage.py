"""A trigger's consumer rides out Kafka being unreachable instead of stopping the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError

from execmesh.broker import kafka_io
from execmesh.broker.kafka_io import TriggerConsumer
from execmesh.broker.offsets import OffsetTracker

TOPIC = "knative-broker-test-default"


@dataclass
class Record:
    offset: int
    key: bytes | None = b"exec-1"
    value: bytes = b"not a cloudevent"
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = 0


class UnreachableThenBackConsumer:
    """``poll`` fails as kafka-python does while Kafka is down, then delivers one record."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.polls = 0
        self.closed = False

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        self.polls += 1
        if self.polls <= self.failures:
            raise KafkaConnectionError("111 ECONNREFUSED")
        if self.polls == self.failures + 1:
            return {TopicPartition(TOPIC, 0): [Record(offset=7)]}
        time.sleep(0.01)
        return {}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, 0)]

    def commit(self, offsets: dict[Any, Any]) -> None:
        pass

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


class CallingLoop:
    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        callback(*args)


def test_a_poll_failing_while_kafka_is_down_is_retried_and_the_consumer_lives_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_io, "POLL_RETRY_SECONDS", 0.01)
    delivered: list[tuple[int, int]] = []
    got_one = threading.Event()

    def submit(batch: list[tuple[int, int, bytes | None, Any]]) -> None:
        delivered.extend((partition, offset) for partition, offset, _, _ in batch)
        got_one.set()

    trigger = TriggerConsumer(
        "127.0.0.1:1",
        TOPIC,
        "group",
        CallingLoop(),
        submit,
        pending=lambda: 0,  # type: ignore[arg-type]
    )
    fake = UnreachableThenBackConsumer(failures=3)
    trigger._consumer = fake
    trigger._trackers[0] = OffsetTracker(7)
    trigger._running.set()
    trigger._polling.set()
    trigger._thread.start()
    try:
        assert got_one.wait(5), "nothing delivered after Kafka came back"
        assert trigger.alive
    finally:
        trigger.close()
    assert delivered == [(0, 7)]
    assert fake.polls > 3 and fake.closed
