"""Kafka stopped for ten seconds under traffic, then started again: the ingress takes events
again within seconds, and what it takes is delivered.

On a private Kafka (see private_kafka.py): the shared one is never stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from broker_harness import BrokerProcess, Subscriber, trigger
from private_kafka import PrivateKafka, private_kafka

pytestmark = pytest.mark.services

__all__ = ["private_kafka"]

OUTAGE_SECONDS = 10.0
RECOVERY_BOUND = 30.0


@contextmanager
def steady_traffic(broker: BrokerProcess, senders: int = 4) -> Iterator[list[int]]:
    """Events POSTed without pause, so that records are in flight when Kafka stops: those
    are what left kafka-python's producer without a producer id for good."""
    statuses: list[int] = []
    stop = threading.Event()

    def send(sender: int) -> None:
        with httpx.Client() as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    statuses.append(broker.post(f"traffic-{sender}-{n}", client=client))
                except httpx.HTTPError:
                    statuses.append(0)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


def seconds_until_accepted(broker: BrokerProcess, bound: float) -> float:
    started = time.monotonic()
    with httpx.Client() as client:
        while time.monotonic() - started < bound:
            try:
                if broker.post(f"probe-{time.monotonic()}", client=client) == 202:
                    return time.monotonic() - started
            except httpx.HTTPError:
                time.sleep(0.2)
    raise AssertionError(f"the ingress took no event in the {bound:.0f}s after Kafka restarted")


@pytest.mark.timeout(180)
def test_after_kafka_restarts_the_ingress_takes_events_again_and_they_are_delivered(
    private_kafka: PrivateKafka,
    start_broker: Callable[..., BrokerProcess],
    subscriber: Subscriber,
) -> None:
    broker = start_broker([trigger("all", subscriber.url("/"))], bootstrap=private_kafka.bootstrap)
    assert broker.post("before") == 202

    with steady_traffic(broker) as statuses:
        time.sleep(1)
        private_kafka.stop()
        time.sleep(OUTAGE_SECONDS)
        private_kafka.start()
        took = seconds_until_accepted(broker, RECOVERY_BOUND)
    print(f"\ningress accepting again {took:.1f}s after Kafka was back; {len(statuses)} posts")

    assert broker.post("after-recovery") == 202
    deadline = time.monotonic() + 30
    while not {"before", "after-recovery"} <= {r.id for r in subscriber.received}:
        assert time.monotonic() < deadline, "an event the ingress took was not delivered"
        time.sleep(0.05)
