"""The broker's Kafka edges: the topic, the producer behind the ingress, one consumer per
trigger.

kafka-python clients are blocking, so each consumer runs in its own thread and hands polled
records to the event loop; finished offsets come back through a queue, and the thread
commits the lowest unfinished offset of each partition.

The local broker is its topics' only reader, so a trigger's consumer assigns itself every
partition and uses its consumer group (`knative-trigger-{namespace}-{name}`) only to store
offsets: a restart after kill -9 resumes at once instead of waiting for the dead member's
session to expire. As Knative's controller does, a group with no committed offsets gets the
topic's end offsets committed before the broker takes traffic: a new trigger starts at the
latest offset, and nothing accepted after start-up can slip past it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from execmesh.broker.cloudevent import Event
from execmesh.broker.kafka_binding import KafkaRecord, from_record
from execmesh.broker.offsets import OffsetTracker
from execmesh.errors import InvalidEvent, PermanentError, TransientError

log = logging.getLogger(__name__)

POLL_RETRY_SECONDS = 1.0

DEFAULT_PARTITIONS = 10

# kafka-python's default is 30 s: after an outage of a few seconds, a client could wait
# that long before trying a Kafka that is back. Java clients cap their backoff at 1 s.
RECONNECT_BACKOFF_MAX_MS = 1000

# The producer of a starting broker may wait for Kafka; a replacement only briefly.
BOOTSTRAP_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0


def ensure_topic(bootstrap: str, topic: str, partitions: int = DEFAULT_PARTITIONS) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="execmesh-broker-admin")
    try:
        try:
            admin.create_topics(
                {topic: {"num_partitions": partitions, "replication_factor": 1}},
                wait_for_metadata=True,
            )
            log.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()


class Producer(Protocol):
    """The part of kafka-python's KafkaProducer the event log uses; fakes stand in for it in
    unit tests."""

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any: ...

    def partitions_for(self, topic: str) -> Any: ...

    def close(self, timeout: float | None = None) -> None: ...


class KafkaEventLog:
    """The ingress's EventLog: acks=all, a short linger so concurrent sends share a batch.

    A producer that stops acknowledging is replaced by a new one. kafka-python 3.0.12's
    idempotent producer wedges for good when a batch it had already sent expires (Kafka
    down for longer than the delivery timeout): it drops its producer id and never asks
    for a new one, so it sends nothing again, not even expiring what it holds. A dead
    I/O thread looks the same from here. Replacing the producer keeps the guarantee: a
    record is reported stored only on an acknowledgement from Kafka (acks=all), whichever
    producer sent it; records of the old producer were answered as not stored.
    """

    def __init__(
        self,
        bootstrap: str,
        linger_ms: int = 1,
        ack_timeout: float = 5.0,
        patience: float | None = None,
        new_producer: Callable[[float], Producer] | None = None,
    ) -> None:
        self._ack_timeout = ack_timeout
        self._new_producer = new_producer or functools.partial(
            _kafka_producer, bootstrap, linger_ms, ack_timeout
        )
        self._producer = self._new_producer(BOOTSTRAP_TIMEOUT)
        self._watchdog = Watchdog(2 * ack_timeout if patience is None else patience)
        self._topics: set[str] = set()
        self._replacement: asyncio.Task[None] | None = None
        self._closed = False

    async def append(self, topic: str, record: KafkaRecord) -> None:
        self._topics.add(topic)
        try:
            await self._send(topic, record)
        except TransientError:
            if self._watchdog.failed():
                self._replace_soon()
            raise
        self._watchdog.acknowledged()

    async def _send(self, topic: str, record: KafkaRecord) -> None:
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()
        try:
            sent = self._producer.send(
                topic, value=record.value, key=record.key, headers=record.headers
            )
        except MessageSizeTooLargeError as error:
            raise PermanentError(str(error)) from error
        except KafkaError as error:
            raise TransientError(f"Kafka refused the record: {error}") from error
        sent.add_callback(lambda _: loop.call_soon_threadsafe(_resolve, acked, None))
        sent.add_errback(lambda error: loop.call_soon_threadsafe(_resolve, acked, error))
        try:
            await asyncio.wait_for(acked, self._ack_timeout)
        except TimeoutError:
            raise TransientError(f"Kafka did not acknowledge within {self._ack_timeout}s") from None
        except MessageSizeTooLargeError as error:
            raise PermanentError(str(error)) from error
        except KafkaError as error:
            raise TransientError(f"Kafka refused the record: {error}") from error

    def _replace_soon(self) -> None:
        if self._replacement is None or self._replacement.done():
            self._replacement = asyncio.create_task(self._replace())

    async def _replace(self) -> None:
        """In the background: the request that noticed is answered 503 at once."""
        self._watchdog.replacing()
        try:
            fresh = await asyncio.to_thread(self._connect, sorted(self._topics))
        except Exception as error:  # kafka-python raises KafkaError, OSError, ValueError...
            log.warning("Kafka producer not replaced (Kafka unreachable?): %s", error)
            return
        if self._closed:
            await asyncio.to_thread(_retire, fresh)
            return
        stale, self._producer = self._producer, fresh
        log.warning("replaced the Kafka producer: it acknowledged nothing for a while")
        await asyncio.to_thread(_retire, stale)

    def _connect(self, topics: list[str]) -> Producer:
        """A new producer that reached Kafka and knows the topics' partitions, so that its
        first sends do not block the event loop waiting for metadata."""
        producer = self._new_producer(self._ack_timeout)
        try:
            for topic in topics:
                producer.partitions_for(topic)
        except BaseException:
            _retire(producer)
            raise
        return producer

    def close(self) -> None:
        self._closed = True
        _retire(self._producer)


class Watchdog:
    """When to replace the producer: appends have failed for `patience` seconds with no
    acknowledgement in between, and no replacement began in the last `patience` seconds
    (while Kafka is down, each attempt waits for a bootstrap that cannot succeed)."""

    def __init__(self, patience: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._patience = patience
        self._clock = clock
        self._failing_since: float | None = None
        self._last_replacement = -math.inf

    def acknowledged(self) -> None:
        self._failing_since = None

    def failed(self) -> bool:
        """Record a failed append; True when the producer is to be replaced now."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        return (
            now - self._failing_since >= self._patience
            and now - self._last_replacement >= self._patience
        )

    def replacing(self) -> None:
        self._last_replacement = self._clock()


def _kafka_producer(
    bootstrap: str, linger_ms: int, ack_timeout: float, bootstrap_timeout: float
) -> Producer:
    producer: Producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="execmesh-broker-ingress",
        acks="all",
        linger_ms=linger_ms,
        max_block_ms=2000,
        request_timeout_ms=int(ack_timeout * 1000),
        delivery_timeout_ms=int(ack_timeout * 1000) + linger_ms + 1000,
        batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        bootstrap_timeout_ms=int(bootstrap_timeout * 1000),
    )
    return producer


def _retire(producer: Producer) -> None:
    try:
        producer.close(timeout=CLOSE_TIMEOUT)
    except KafkaError as error:
        # kafka-python's close first waits for the records the producer holds, and a wedged
        # producer never completes them: its I/O thread is then left behind, idle.
        log.warning("a Kafka producer did not close within %.0fs: %s", CLOSE_TIMEOUT, error)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


Submit = Callable[[list[tuple[int, int, bytes | None, Event | None]]], None]


class TriggerConsumer:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        loop: asyncio.AbstractEventLoop,
        submit: Submit,
        pending: Callable[[], int],
        max_pending: int = 2000,
        commit_interval: float = 0.2,
    ) -> None:
        self.topic, self.group = topic, group
        self._bootstrap = bootstrap
        self._loop, self._submit, self._pending = loop, submit, pending
        self._max_pending, self._commit_interval = max_pending, commit_interval
        self._done: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._trackers: dict[int, OffsetTracker] = {}
        self._polling = threading.Event()
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"consumer-{group}", daemon=True)
        self._consumer: Any = None

    def start(self) -> None:
        """Blocking: assign partitions and settle the start offsets, then poll in a thread."""
        consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.group,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_poll_records=500,
            # Kafka answers a fetch as soon as one record is there: the wait only bounds
            # idle fetches, and with one consumer per trigger idle fetches add up.
            fetch_max_wait_ms=500,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        partitions = consumer.partitions_for_topic(self.topic) or set()
        deadline = time.monotonic() + 15
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            consumer.close()
            raise TransientError(f"topic {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        fresh: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in tps:
            position = consumer.committed(tp)
            if position is None:
                position = ends[tp]
                fresh[tp] = OffsetAndMetadata(position, "", -1)
            consumer.seek(tp, position)
            self._trackers[tp.partition] = OffsetTracker(position)
            self._trackers[tp.partition].committed(position)
        if fresh:
            consumer.commit(fresh)
            log.info("group %s starts at the latest offsets of %s", self.group, self.topic)
        self._consumer = consumer
        self._running.set()
        self._polling.set()
        self._thread.start()

    def finished(self, partition: int, offset: int) -> None:
        self._done.put((partition, offset))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop_polling(self) -> None:
        self._polling.clear()

    def close(self) -> None:
        """Blocking: commit what finished, then leave."""
        self._polling.clear()
        self._running.clear()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        consumer = self._consumer
        last_commit = time.monotonic()
        paused = False
        try:
            while self._running.is_set():
                self._collect_finished()
                if time.monotonic() - last_commit >= self._commit_interval:
                    self._commit()
                    last_commit = time.monotonic()
                if not self._polling.is_set():
                    time.sleep(0.05)
                    continue
                overloaded = self._pending() >= self._max_pending
                if overloaded != paused:
                    assigned = list(consumer.assignment())
                    (consumer.pause if overloaded else consumer.resume)(*assigned)
                    paused = overloaded
                try:
                    self._poll_once(consumer)
                except KafkaError as error:
                    # Kafka unreachable (restarting, network): the client reconnects by itself
                    # and the positions are unchanged, so poll again after a pause.
                    log.warning("group %s: poll failed, retrying: %s", self.group, error)
                    time.sleep(POLL_RETRY_SECONDS)
            self._collect_finished()
            self._commit()
        except Exception:
            log.exception("consumer %s crashed", self.group)
        finally:
            consumer.close(autocommit=False)

    def _poll_once(self, consumer: Any) -> None:
        polled = consumer.poll(timeout_ms=500)
        batch: list[tuple[int, int, bytes | None, Event | None]] = []
        for tp, records in polled.items():
            tracker = self._trackers[tp.partition]
            for record in records:
                tracker.started(record.offset)
                batch.append((tp.partition, record.offset, record.key, _event(record)))
        if batch:
            self._loop.call_soon_threadsafe(self._submit, batch)

    def _collect_finished(self) -> None:
        while True:
            try:
                partition, offset = self._done.get_nowait()
            except queue.Empty:
                return
            self._trackers[partition].finished(offset)

    def _commit(self) -> None:
        offsets = {}
        for partition, tracker in self._trackers.items():
            offset = tracker.to_commit()
            if offset is not None:
                offsets[TopicPartition(self.topic, partition)] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as error:
            log.warning("group %s: commit failed, will retry: %s", self.group, error)
            return
        for tp, committed in offsets.items():
            self._trackers[tp.partition].committed(committed.offset)


def _event(record: Any) -> Event | None:
    try:
        return from_record(record.value, record.headers)
    except InvalidEvent as error:
        log.warning("skipping record %s@%d: %s", record.partition, record.offset, error)
        return None
