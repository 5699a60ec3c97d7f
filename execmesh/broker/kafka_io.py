"""The broker's Kafka edges: the topic, the producer behind the ingress (and behind the
dispatchers' replies), and the consumer behind the topic's readers (`readers.py`).

The producer and the consumer are librdkafka's (confluent-kafka): it fetches and sends in its
own threads, outside the GIL that the broker's event loop needs. Topics are created with
kafka-python's admin client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import confluent_kafka
from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from execmesh.broker.kafka_binding import KafkaRecord
from execmesh.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

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


Settle = Callable[[Exception | None], None]


class Producer(Protocol):
    """What the event log needs of a Kafka producer; fakes stand in for it in unit tests."""

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        settle: Settle,
    ) -> None:
        """Queue a record; `settle` is called once, from another thread, with None when Kafka
        acknowledged it or with the TransientError or PermanentError it ended in. Raises
        either error when the record cannot even be queued."""

    def partitions_for(self, topic: str) -> set[int]: ...

    def close(self, timeout: float) -> None: ...


class KafkaEventLog:
    """The ingress's EventLog: acks=all, no linger. Sends still share batches under load (records
    wait while a request is in flight); a 1 ms linger cost 1.2 ms a hop and no throughput.

    A producer that stops acknowledging is replaced by a new one: a client wedged for good
    (kafka-python 3.0.12's idempotent producer did, after a batch expired while Kafka was
    down), a fatal error of librdkafka's idempotent producer, or a dead poll thread all look
    the same from here. Replacing the producer keeps the guarantee: a record is reported
    stored only on an acknowledgement from Kafka (acks=all), whichever producer sent it;
    records of the old producer were answered as not stored.
    """

    def __init__(
        self,
        bootstrap: str,
        linger_ms: int = 0,
        ack_timeout: float = 5.0,
        patience: float | None = None,
        new_producer: Callable[[float], Producer] | None = None,
    ) -> None:
        self._ack_timeout = ack_timeout
        self._new_producer = new_producer or functools.partial(
            RdKafkaProducer, bootstrap, linger_ms, ack_timeout
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

        def settle(error: Exception | None) -> None:
            # A retired producer may report after the loop that waited for it closed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, acked, error)

        self._producer.send(topic, record.value, record.key, record.headers, settle)
        try:
            await asyncio.wait_for(acked, self._ack_timeout)
        except TimeoutError:
            raise TransientError(f"Kafka did not acknowledge within {self._ack_timeout}s") from None

    def _replace_soon(self) -> None:
        if self._replacement is None or self._replacement.done():
            self._replacement = asyncio.create_task(self._replace())

    async def _replace(self) -> None:
        """In the background: the request that noticed is answered 503 at once."""
        self._watchdog.replacing()
        try:
            fresh = await asyncio.to_thread(self._connect, sorted(self._topics))
        except Exception as error:  # TransientError, or whatever else a client raises
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
        first records go out without waiting for metadata."""
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


class RdKafkaProducer:
    """librdkafka's producer (confluent-kafka), with a thread that serves its delivery reports.

    Idempotent (acks=all, retries without duplicates or reordering). A record not
    acknowledged within the delivery timeout is reported failed, never left pending.
    """

    def __init__(
        self, bootstrap: str, linger_ms: int, ack_timeout: float, bootstrap_timeout: float
    ) -> None:
        self._timeout = ack_timeout
        self._producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "execmesh-broker-ingress",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "request.timeout.ms": int(ack_timeout * 1000),
                "message.timeout.ms": int(ack_timeout * 1000) + linger_ms + 1000,
                "batch.size": 256 * 1024,
                "message.max.bytes": 4 * 1024 * 1024,
                "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
                "logger": logging.getLogger("librdkafka"),
            }
        )
        try:
            self._producer.list_topics(timeout=bootstrap_timeout)
        except confluent_kafka.KafkaException as error:
            raise TransientError(f"Kafka unreachable at {bootstrap}: {error}") from error
        self._polling = True
        self._poller = threading.Thread(target=self._poll, name="kafka-deliveries", daemon=True)
        self._poller.start()

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        settle: Settle,
    ) -> None:
        def delivered(error: confluent_kafka.KafkaError | None, record: object) -> None:
            settle(None if error is None else _refusal(error))

        produce_headers: list[tuple[str, str | bytes | None]] = list(headers)
        try:
            self._producer.produce(
                topic, value, key, headers=produce_headers, on_delivery=delivered
            )
        except BufferError as error:
            raise TransientError(f"the producer's queue is full: {error}") from error
        except confluent_kafka.KafkaException as error:
            raise _refusal(error.args[0]) from error

    def partitions_for(self, topic: str) -> set[int]:
        try:
            metadata = self._producer.list_topics(topic, timeout=self._timeout)
        except confluent_kafka.KafkaException as error:
            raise TransientError(f"no metadata for {topic}: {error}") from error
        found = metadata.topics[topic]
        if found.error is not None:
            raise TransientError(f"no metadata for {topic}: {found.error}")
        return set(found.partitions)

    def close(self, timeout: float) -> None:
        """Wait up to `timeout` for the records in flight; TransientError if some remain."""
        self._polling = False
        self._poller.join()
        left = self._producer.flush(timeout)
        if left:
            raise TransientError(f"{left} record(s) not acknowledged within {timeout:.0f}s")

    def _poll(self) -> None:
        while self._polling:
            self._producer.poll(0.1)


def _refusal(error: confluent_kafka.KafkaError) -> TransientError | PermanentError:
    if error.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
        return PermanentError(f"Kafka refused the record: {error.str()}")
    return TransientError(f"Kafka refused the record: {error.str()}")


def _retire(producer: Producer) -> None:
    try:
        producer.close(timeout=CLOSE_TIMEOUT)
    except TransientError as error:
        # A wedged producer never completes what it holds; its threads are left behind, idle.
        log.warning("a Kafka producer did not close: %s", error)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


@dataclass(frozen=True)
class ReadRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class Consumer(Protocol):
    """What the topic readers need of a Kafka consumer; fakes stand in for it in unit tests.

    Partitions are assigned, never subscribed: a group only stores offsets, and no consumer
    joins it.
    """

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; none while it is still being created."""

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """The first offset the log still keeps, and the offset after its last record."""

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int | None]: ...

    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Store the group's offsets; TransientError when Kafka did not take them."""

    def read(self, topic: str, positions: Mapping[int, int]) -> None:
        """Fetch these partitions from these offsets on."""

    def poll(self, timeout: float) -> list[ReadRecord]:
        """What arrived, or nothing after `timeout` seconds; TransientError when Kafka is
        unreachable."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...


class RdKafkaConsumer:
    """librdkafka's consumer (confluent-kafka). It fetches in its own threads once told what
    to `read`, and only then: a cursor's consumer stores offsets and fetches nothing."""

    MAX_RECORDS = 500
    METADATA_TIMEOUT = 5.0

    def __init__(self, bootstrap: str, group: str, client_id: str) -> None:
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": client_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Only for a position that retention removed while the broker ran: the starts
                # are clamped to the log's first offset.
                "auto.offset.reset": "latest",
                # Kafka answers a fetch as soon as one record is there: the wait only bounds
                # idle fetches.
                "fetch.wait.max.ms": 500,
                "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
                "logger": logging.getLogger("librdkafka"),
            }
        )

    def partitions(self, topic: str) -> list[int]:
        try:
            metadata = self._consumer.list_topics(topic, timeout=self.METADATA_TIMEOUT)
        except confluent_kafka.KafkaException as error:
            raise TransientError(f"no metadata for {topic}: {error}") from error
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        try:
            first, end = self._consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, partition), timeout=self.METADATA_TIMEOUT
            )
        except confluent_kafka.KafkaException as error:
            raise TransientError(f"no offsets for {topic}/{partition}: {error}") from error
        return first, end

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        asked = [confluent_kafka.TopicPartition(topic, p) for p in partitions]
        try:
            found = self._consumer.committed(asked, timeout=self.METADATA_TIMEOUT)
        except confluent_kafka.KafkaException as error:
            raise TransientError(f"no committed offsets for {topic}: {error}") from error
        return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in found}

    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        stored = [confluent_kafka.TopicPartition(topic, p, o) for p, o in offsets.items()]
        try:
            self._consumer.commit(offsets=stored, asynchronous=False)
        except confluent_kafka.KafkaException as error:
            raise TransientError(f"offsets not committed: {error}") from error

    def read(self, topic: str, positions: Mapping[int, int]) -> None:
        self._consumer.assign(
            [confluent_kafka.TopicPartition(topic, p, o) for p, o in positions.items()]
        )

    def poll(self, timeout: float) -> list[ReadRecord]:
        # consume() waits for a full batch or the timeout: wait for one record, then take what
        # else is already there.
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        records = []
        for message in [first, *self._consumer.consume(self.MAX_RECORDS - 1, 0)]:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise TransientError(f"the consumer failed: {error.str()}")
                log.warning("reading %s: %s", message.topic(), error.str())
                continue
            records.append(
                ReadRecord(
                    message.partition() or 0,
                    message.offset() or 0,
                    message.key(),
                    message.value(),
                    # A list of (name, bytes or None) as consumed; the stub also allows a dict.
                    cast(list[tuple[str, bytes | None]], message.headers() or []),
                )
            )
        return records

    def pause(self) -> None:
        self._consumer.pause(self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(self._consumer.assignment())

    def close(self) -> None:
        self._consumer.close()
