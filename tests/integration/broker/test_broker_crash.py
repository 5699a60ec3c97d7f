"""kill -9 of the broker in the middle of a stream loses nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from broker_harness import BrokerProcess, Subscriber, trigger

pytestmark = pytest.mark.services

TOTAL = 1000


def send_all(broker: BrokerProcess, event_ids: list[str], stop: threading.Event) -> list[str]:
    """POST each event once; the ids that did not get a 202 (to be sent again)."""
    unsent: list[str] = []
    lock = threading.Lock()

    def send(chunk: list[str]) -> None:
        with httpx.Client() as client:
            for event_id in chunk:
                status = 0
                if not stop.is_set():
                    try:
                        status = broker.post(
                            event_id, client=client, partitionkey=f"k{hash(event_id) % 20}"
                        )
                    except httpx.HTTPError:
                        status = 0
                if status != 202:
                    with lock:
                        unsent.append(event_id)

    chunks = [event_ids[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, chunks))
    return unsent


def test_kill_9_in_the_middle_of_1000_events_then_restart_delivers_every_event(
    start_broker: Callable[..., BrokerProcess], subscriber: Subscriber
) -> None:
    broker = start_broker([trigger("all", subscriber.url("/"))])
    event_ids = [f"crash-{n}" for n in range(TOTAL)]
    stop_sending = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 60
        while len(subscriber.received) < TOTAL // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        broker.kill9()
        stop_sending.set()

    kill_thread = threading.Thread(target=killer)
    kill_thread.start()
    unsent = send_all(broker, event_ids, stop_sending)
    kill_thread.join(70)
    delivered_before_restart = len(subscriber.received)

    broker.start()
    assert send_all(broker, unsent, threading.Event()) == []
    deadline = time.monotonic() + 60
    while set(event_ids) - {r.id for r in subscriber.received} and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)

    counts = Counter(r.id for r in subscriber.received)
    missing = set(event_ids) - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    print(
        f"\nkill -9 after {delivered_before_restart} deliveries; {len(unsent)} events re-sent "
        f"after restart; {len(counts)} distinct delivered, {duplicates} duplicate deliveries, "
        f"{len(missing)} missing"
    )
    assert not missing
    assert set(counts) == set(event_ids)
