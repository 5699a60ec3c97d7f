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
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

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


class KafkaEventLog:
    """The ingress's EventLog: acks=all, a short linger so concurrent sends share a batch."""

    def __init__(self, bootstrap: str, linger_ms: int = 1, ack_timeout: float = 5.0) -> None:
        self._ack_timeout = ack_timeout
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="execmesh-broker-ingress",
            acks="all",
            linger_ms=linger_ms,
            max_block_ms=2000,
            request_timeout_ms=int(ack_timeout * 1000),
            delivery_timeout_ms=int(ack_timeout * 1000) + linger_ms + 1000,
            batch_size=256 * 1024,
            max_request_size=4 * 1024 * 1024,
        )

    async def append(self, topic: str, record: KafkaRecord) -> None:
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

    def close(self) -> None:
        self._producer.close(timeout=5)


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
