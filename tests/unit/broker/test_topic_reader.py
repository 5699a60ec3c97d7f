"""The shared topic reader: one consumer for every trigger, each trigger handed only what it
has not had, a trigger that falls behind moved onto a consumer of its own, and Kafka being
unreachable ridden out instead of stopping the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from execmesh.broker import readers
from execmesh.broker.kafka_io import ReadRecord
from execmesh.broker.readers import Handed, TopicReader, TriggerCursor
from execmesh.errors import TransientError

TOPIC = "knative-broker-test-default"


class FakeConsumer:
    """A consumer over one partition: ``committed`` is the group's offset; each poll returns
    the records from the position on, after ``failures`` refused polls."""

    def __init__(
        self, records: int = 0, committed: int | None = None, failures: int = 0, start: int = 0
    ) -> None:
        self.records, self.committed_offset, self.failures = records, committed, failures
        self.start = start  # the log's first offset still kept (retention)
        self.position = 0
        self.polls = 0
        self.commits: list[int] = []
        self.paused = False
        self.closed = False
        self.unanswered_reads_of_committed = 0  # as a Kafka just started: "not coordinator"

    def partitions(self, topic: str) -> list[int]:
        return [0]

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        return self.start, self.records

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        if self.unanswered_reads_of_committed:
            self.unanswered_reads_of_committed -= 1
            raise TransientError("Broker: Not coordinator")
        return {0: self.committed_offset}

    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        self.commits += offsets.values()

    def read(self, topic: str, positions: Mapping[int, int]) -> None:
        self.position = positions[0]

    def poll(self, timeout: float) -> list[ReadRecord]:
        self.polls += 1
        if self.polls <= self.failures:
            raise TransientError("111 ECONNREFUSED")
        if self.position < self.start:  # out of range: auto.offset.reset=latest
            self.position = self.records
        if self.paused or self.position >= self.records:
            time.sleep(0.005)
            return []
        batch = [
            ReadRecord(0, offset, b"exec-1", b"not a cloudevent", [])
            for offset in range(self.position, self.records)
        ]
        self.position = self.records
        return batch

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


class CallingLoop:
    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        callback(*args)


@dataclass
class Trigger:
    """What a dispatcher does with its records: keeps them, finishes them or not."""

    cursor: TriggerCursor
    consumer: FakeConsumer
    finish: bool = True
    handed: list[int] = field(default_factory=list)
    unfinished: int = 0

    def submit(self, batch: list[Handed]) -> None:
        for partition, offset, _, _ in batch:
            self.handed.append(offset)
            if self.finish:
                self.cursor.finished(partition, offset)
            else:
                self.unfinished += 1


def trigger(group: str, consumer: FakeConsumer, *, finish: bool = True) -> Trigger:
    cursor = TriggerCursor(
        "127.0.0.1:1",
        TOPIC,
        group,
        CallingLoop(),  # type: ignore[arg-type]
        max_pending=3,
        consumer_factory=lambda bootstrap, group, client_id: consumer,
    )
    handle = Trigger(cursor, consumer, finish)
    cursor.connect(handle.submit, lambda: handle.unfinished)
    return handle


def reader(shared: FakeConsumer, *triggers: Trigger) -> TopicReader:
    return TopicReader(
        TOPIC,
        [t.cursor for t in triggers],
        bootstrap="127.0.0.1:1",
        commit_interval=0.01,
        consumer_factory=lambda bootstrap, group, client_id: shared,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_one_read_serves_every_trigger_from_its_own_groups_position() -> None:
    behind = trigger("behind", FakeConsumer(records=10, committed=4))
    ahead = trigger("ahead", FakeConsumer(records=10, committed=8))
    shared = FakeConsumer(records=10)
    topic = reader(shared, behind, ahead)
    topic.start()
    try:
        wait_until(lambda: len(behind.handed) == 6 and len(ahead.handed) == 2)
        wait_until(lambda: behind.consumer.commits[-1:] == [10])
        wait_until(lambda: ahead.consumer.commits[-1:] == [10])
    finally:
        topic.close()
    # The shared consumer started at the lowest position; each trigger got only its own part.
    assert behind.handed == [4, 5, 6, 7, 8, 9]
    assert ahead.handed == [8, 9]
    assert shared.closed and behind.consumer.closed and ahead.consumer.closed


def test_a_group_whose_offset_retention_removed_resumes_at_the_log_start_alone() -> None:
    stale = trigger("stale", FakeConsumer(records=10, committed=2, start=5))
    current = trigger("current", FakeConsumer(records=10, committed=6, start=5))
    topic = reader(FakeConsumer(records=10, start=5), stale, current)
    topic.start()
    try:
        wait_until(lambda: len(stale.handed) == 5 and len(current.handed) == 4)
    finally:
        topic.close()
    # Seeking the shared consumer to 2 would have reset it to the end, for both triggers.
    assert stale.handed == [5, 6, 7, 8, 9]
    assert current.handed == [6, 7, 8, 9]
    assert stale.consumer.commits[0] == 5


def test_a_new_group_starts_at_the_end_and_has_it_committed_before_traffic() -> None:
    fresh = trigger("fresh", FakeConsumer(records=5, committed=None))
    topic = reader(FakeConsumer(records=5), fresh)
    topic.start()
    try:
        assert fresh.consumer.commits == [5]
        time.sleep(0.05)
        assert fresh.handed == []
    finally:
        topic.close()


def test_a_group_whose_coordinator_is_not_ready_yet_is_settled_once_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(readers, "SETTLE_RETRY_SECONDS", 0.01)
    consumer = FakeConsumer(records=10, committed=4)
    consumer.unanswered_reads_of_committed = 3
    late = trigger("late", consumer)
    topic = reader(FakeConsumer(records=10), late)
    topic.start()
    try:
        wait_until(lambda: len(late.handed) == 6)
    finally:
        topic.close()
    assert late.handed == [4, 5, 6, 7, 8, 9]


def test_a_trigger_that_falls_behind_reads_on_its_own_and_the_others_go_on() -> None:
    stuck_consumer = FakeConsumer(records=0, committed=0)
    stuck = trigger("stuck", stuck_consumer, finish=False)
    healthy = trigger("healthy", FakeConsumer(records=0, committed=0))
    shared = FakeConsumer(records=0)
    topic = reader(shared, stuck, healthy)
    topic.start()
    try:
        shared.records = 5
        wait_until(lambda: len(topic.detached) == 1)
        # The stuck trigger's own consumer resumes right after what it was handed, paused
        # while it is overloaded; the healthy one keeps reading from the shared consumer.
        assert stuck.handed == [0, 1, 2, 3, 4]
        assert stuck_consumer.position == 5
        wait_until(lambda: stuck_consumer.paused)
        shared.records = 12
        wait_until(lambda: len(healthy.handed) == 12)
        assert stuck.handed == [0, 1, 2, 3, 4]
        # Its subscriber catches up: it reads again, from its own consumer.
        for offset in stuck.handed:
            stuck.cursor.finished(0, offset)
        stuck.unfinished = 0
        stuck_consumer.records = 12
        wait_until(lambda: len(stuck.handed) == 12)
        assert stuck.handed == list(range(12))
        assert topic.alive
    finally:
        topic.close()
    assert stuck_consumer.closed


def test_a_poll_failing_while_kafka_is_down_is_retried_and_the_reader_lives_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(readers, "POLL_RETRY_SECONDS", 0.01)
    one = trigger("one", FakeConsumer(records=7, committed=7))
    shared = FakeConsumer(records=7, failures=3)
    topic = reader(shared, one)
    topic.start()
    try:
        shared.records = 8
        wait_until(lambda: one.handed == [7])
        assert topic.alive
    finally:
        topic.close()
    assert shared.polls > 3 and shared.closed


def test_a_crashed_reader_is_reported_dead() -> None:
    one = trigger("one", FakeConsumer(records=0, committed=0))
    shared = FakeConsumer(records=0)
    topic = reader(shared, one)
    topic.start()
    done = threading.Event()

    def broken(timeout: float) -> list[ReadRecord]:
        done.set()
        raise RuntimeError("a bug")

    shared.poll = broken  # type: ignore[method-assign]
    assert done.wait(5)
    wait_until(lambda: not topic.alive)
    topic.close()
