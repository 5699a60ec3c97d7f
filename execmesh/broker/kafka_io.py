"""The broker's Kafka edges: the topic, and the producer behind the ingress (and behind the
dispatchers' replies). Reading the topic for the triggers is `readers.py`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError

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


class Producer(Protocol):
    """The part of kafka-python's KafkaProducer the event log uses; fakes stand in for it in
    unit tests."""

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Any: ...

    def partitions_for(self, topic: str) -> Any: ...

    def close(self, timeout: float | None = None) -> None: ...


class KafkaEventLog:
    """The ingress's EventLog: acks=all, no linger. Sends still share batches under load (records
    wait while a request is in flight); a 1 ms linger cost 1.2 ms a hop and no throughput.

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
        linger_ms: int = 0,
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
