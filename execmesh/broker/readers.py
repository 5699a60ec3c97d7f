"""Reading a broker's topic for its triggers: one Kafka consumer shared by all of them, each
trigger keeping the offsets of its own consumer group.

Every trigger sees every record of its broker's topic (its dispatcher filters), so one fetch
can serve them all. A consumer per trigger meant one thread per trigger waking up for every
record in this one Python process: with 9 triggers a hop cost ~5 ms more at p50 than with one
(bench/mesh). The shared reader decodes each record once and hands it to every trigger's
cursor. A trigger that falls behind (`max_pending` events unfinished: its subscriber is down
or slow) is detached onto a consumer of its own, from where it stands, so that it never holds
the others back: Knative's isolation between triggers, without its cost when all keep up.

Each trigger keeps its consumer group (`knative-trigger-{namespace}-{name}`), used to store
offsets only (partitions are assigned, never subscribed), so a restart after kill -9 resumes
each trigger at once where its group stands. The shared reader starts from the lowest of the
groups' positions and a trigger is handed only what lies past its own. As Knative's
controller does, a group with no committed offsets gets the topic's end offsets committed
before the broker takes traffic: a new trigger starts at the latest offset, and nothing
accepted after start-up can slip past it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from execmesh.broker.cloudevent import Event
from execmesh.broker.kafka_binding import from_record
from execmesh.broker.kafka_io import RECONNECT_BACKOFF_MAX_MS
from execmesh.broker.offsets import OffsetTracker
from execmesh.errors import InvalidEvent, TransientError

log = logging.getLogger(__name__)

POLL_RETRY_SECONDS = 1.0
PARTITIONS_WAIT_SECONDS = 15.0

# (partition, offset, record key, the event or None for a record that is not a CloudEvent)
Handed = tuple[int, int, bytes | None, Event | None]
Submit = Callable[[list[Handed]], None]
ConsumerFactory = Callable[[str, str | None, str], Any]


def kafka_consumer(bootstrap: str, group: str | None, client_id: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        max_poll_records=500,
        # Kafka answers a fetch as soon as one record is there: the wait only bounds idle
        # fetches.
        fetch_max_wait_ms=500,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )


class TriggerCursor:
    """One trigger's place in the topic: its group's offsets, what it was handed, what finished.

    Used by one reader thread at a time: the shared reader's, then, once detached, its own.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        loop: asyncio.AbstractEventLoop,
        max_pending: int = 2000,
        consumer_factory: ConsumerFactory = kafka_consumer,
    ) -> None:
        self.topic, self.group = topic, group
        self._bootstrap, self._loop = bootstrap, loop
        self._max_pending = max_pending
        self._consumer_factory = consumer_factory
        self._submit: Submit | None = None
        self._pending: Callable[[], int] = lambda: 0
        self._done: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._trackers: dict[int, OffsetTracker] = {}
        self.consumer: Any = None

    def connect(self, submit: Submit, pending: Callable[[], int]) -> None:
        """Where the records go, and how many of them are still unfinished there."""
        self._submit, self._pending = submit, pending

    def settle(self, partitions: Sequence[int]) -> None:
        """Blocking: the group's committed offsets, or the topic's end for a new group."""
        consumer = self._consumer_factory(self._bootstrap, self.group, self.group)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        fresh: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in tps:
            committed = consumer.committed(tp)
            # Past retention, the shared reader would seek below the log's start, and its reset
            # to the end would skip every other trigger's unread records too.
            position = ends[tp] if committed is None else max(committed, starts[tp])
            if position != committed:
                if committed is not None:
                    log.warning("group %s: offset %d of %s is gone", self.group, committed, tp)
                fresh[tp] = OffsetAndMetadata(position, "", -1)
            self._trackers[tp.partition] = OffsetTracker(position)
            self._trackers[tp.partition].committed(position)
        if fresh:
            consumer.commit(fresh)
            log.info(
                "group %s starts at %s",
                self.group,
                {tp.partition: o.offset for tp, o in fresh.items()},
            )
        self.consumer = consumer

    @property
    def positions(self) -> dict[int, int]:
        """The next offset to hand this trigger, per partition."""
        return {partition: t.next_offset for partition, t in self._trackers.items()}

    @property
    def overloaded(self) -> bool:
        return self._pending() >= self._max_pending

    def hand(self, records: Sequence[tuple[int, int, bytes | None, Event | None]]) -> None:
        """Pass on the records this trigger has not had yet (the shared reader may start
        below its position)."""
        batch: list[Handed] = []
        for partition, offset, key, event in records:
            tracker = self._trackers[partition]
            if offset >= tracker.next_offset:
                tracker.started(offset)
                batch.append((partition, offset, key, event))
        if batch and self._submit is not None:
            self._loop.call_soon_threadsafe(self._submit, batch)

    def finished(self, partition: int, offset: int) -> None:
        """Thread-safe: the dispatcher is done with this record."""
        self._done.put((partition, offset))

    def collect_finished(self) -> None:
        while True:
            try:
                partition, offset = self._done.get_nowait()
            except queue.Empty:
                return
            self._trackers[partition].finished(offset)

    def commit(self) -> None:
        self.collect_finished()
        offsets = {}
        for partition, tracker in self._trackers.items():
            offset = tracker.to_commit()
            if offset is not None:
                offsets[TopicPartition(self.topic, partition)] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as error:
            log.warning("group %s: commit failed, will retry: %s", self.group, error)
            return
        for tp, committed in offsets.items():
            self._trackers[tp.partition].committed(committed.offset)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)


class TopicReader:
    """A thread that polls one consumer and hands what it reads to its triggers' cursors.

    The shared reader of a topic detaches a trigger that falls behind onto a reader of its
    own (`detached`), which polls the trigger's group consumer from where the trigger stands
    and pauses it while the trigger is overloaded.
    """

    def __init__(
        self,
        topic: str,
        cursors: Sequence[TriggerCursor],
        consumer: Any = None,
        *,
        bootstrap: str = "",
        commit_interval: float = 0.2,
        consumer_factory: ConsumerFactory = kafka_consumer,
    ) -> None:
        self.topic = topic
        self._cursors = list(cursors)
        self._consumer = consumer
        self._shared = consumer is None
        self._bootstrap = bootstrap
        self._commit_interval = commit_interval
        self._consumer_factory = consumer_factory
        self.detached: list[TopicReader] = []
        self._polling = threading.Event()
        self._running = threading.Event()
        name = f"reader-{topic}" if self._shared else f"reader-{self._cursors[0].group}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Blocking: settle every trigger's start offsets, then poll in a thread."""
        if self._shared:
            consumer = self._consumer_factory(self._bootstrap, None, f"broker-{self.topic}")
            try:
                partitions = _partitions(consumer, self.topic)
                for cursor in self._cursors:
                    cursor.settle(partitions)
                tps = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, min(c.positions[tp.partition] for c in self._cursors))
            except BaseException:
                consumer.close()
                for cursor in self._cursors:
                    cursor.close()
                raise
            self._consumer = consumer
        self._running.set()
        self._polling.set()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and all(reader.alive for reader in list(self.detached))

    def stop_polling(self) -> None:
        self._polling.clear()
        for reader in list(self.detached):
            reader.stop_polling()

    def close(self) -> None:
        """Blocking: commit what finished, then leave."""
        self._polling.clear()
        self._running.clear()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for reader in list(self.detached):
            reader.close()

    def _run(self) -> None:
        last_commit = time.monotonic()
        paused = False
        try:
            while self._running.is_set():
                if time.monotonic() - last_commit >= self._commit_interval:
                    for cursor in self._cursors:
                        cursor.commit()
                    last_commit = time.monotonic()
                if not self._polling.is_set():
                    time.sleep(0.05)
                    continue
                if self._shared:
                    self._detach_the_overloaded()
                else:
                    paused = self._pause_while_overloaded(paused)
                try:
                    polled = self._consumer.poll(timeout_ms=500)
                except KafkaError as error:
                    # Kafka unreachable (restarting, network): the client reconnects by itself
                    # and the positions are unchanged, so poll again after a pause.
                    log.warning("%s: poll failed, retrying: %s", self._thread.name, error)
                    time.sleep(POLL_RETRY_SECONDS)
                    continue
                records = [
                    (tp.partition, record.offset, record.key, _event(record))
                    for tp, batch in polled.items()
                    for record in batch
                ]
                if records:
                    for cursor in self._cursors:
                        cursor.hand(records)
            for cursor in self._cursors:
                cursor.commit()
        except Exception:
            log.exception("%s crashed", self._thread.name)
        finally:
            for cursor in self._cursors:
                cursor.close()
            if self._shared and self._consumer is not None:
                self._consumer.close(autocommit=False)

    def _detach_the_overloaded(self) -> None:
        for cursor in [c for c in self._cursors if c.overloaded]:
            self._cursors.remove(cursor)
            cursor.commit()
            for partition, position in cursor.positions.items():
                cursor.consumer.seek(TopicPartition(self.topic, partition), position)
            log.warning("%s fell behind: it reads on its own from now on", cursor.group)
            reader = TopicReader(self.topic, [cursor], cursor.consumer)
            reader.start()
            self.detached.append(reader)

    def _pause_while_overloaded(self, paused: bool) -> bool:
        overloaded = self._cursors[0].overloaded
        if overloaded != paused:
            assigned = list(self._consumer.assignment())
            (self._consumer.pause if overloaded else self._consumer.resume)(*assigned)
        return overloaded


def _partitions(consumer: Any, topic: str) -> list[int]:
    deadline = time.monotonic() + PARTITIONS_WAIT_SECONDS
    partitions = consumer.partitions_for_topic(topic) or set()
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.1)
        partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        raise TransientError(f"topic {topic} has no partitions")
    return sorted(partitions)


def _event(record: Any) -> Event | None:
    try:
        return from_record(record.value, record.headers)
    except InvalidEvent as error:
        log.warning("skipping record %s@%d: %s", record.partition, record.offset, error)
        return None
