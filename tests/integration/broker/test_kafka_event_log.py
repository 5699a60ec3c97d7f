"""The ingress's Kafka producer: stored means acknowledged, and refusals become errors."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from execmesh.broker.cloudevent import Event
from execmesh.broker.kafka_binding import from_record, to_record
from execmesh.broker.kafka_io import KafkaEventLog, RdKafkaProducer, ensure_topic
from execmesh.errors import PermanentError, TransientError
from execmesh.settings import Settings

pytestmark = pytest.mark.services

EVENT = Event({"specversion": "1.0", "id": "1", "source": "/t", "type": "t"}, b"{}")


def bootstrap() -> str:
    return Settings.from_env().kafka_bootstrap_servers


def test_an_appended_event_is_in_the_topic_once_append_returns() -> None:
    from kafka import KafkaConsumer, TopicPartition

    topic = f"test-log-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap(), topic, partitions=1)
    log = KafkaEventLog(bootstrap())
    try:
        asyncio.run(log.append(topic, to_record(EVENT.with_extensions(partitionkey="k"))))
    finally:
        log.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap(), enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = consumer.poll(timeout_ms=5000)[tp]
    finally:
        consumer.close()
    [record] = records
    assert record.key == b"k"
    assert from_record(record.value, record.headers).attributes["partitionkey"] == "k"


def test_a_record_over_kafkas_size_limit_is_a_permanent_error() -> None:
    topic = f"test-log-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap(), topic, partitions=1)
    log = KafkaEventLog(bootstrap())
    try:
        with pytest.raises(PermanentError):
            asyncio.run(log.append(topic, to_record(Event(EVENT.attributes, b"x" * 1_100_000))))
    finally:
        log.close()


def test_a_producer_that_cannot_reach_kafka_is_refused_within_its_bootstrap_timeout() -> None:
    with pytest.raises(TransientError, match="unreachable"):
        RdKafkaProducer("127.0.0.1:1", linger_ms=0, ack_timeout=0.5, bootstrap_timeout=1.0)


def test_a_closed_producer_has_delivered_every_record_it_was_given() -> None:
    topic = f"test-log-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap(), topic, partitions=1)
    producer = RdKafkaProducer(bootstrap(), linger_ms=50, ack_timeout=5.0, bootstrap_timeout=10)
    outcomes: list[Exception | None] = []
    for n in range(20):
        producer.send(topic, str(n).encode(), None, [], outcomes.append)
    producer.close(timeout=5.0)
    assert outcomes == [None] * 20
