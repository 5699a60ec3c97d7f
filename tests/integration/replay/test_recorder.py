from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.database import Database

from execmesh.errors import TransientError
from execmesh.replay.eventstore import EventFilter, EventStore, StoredEvent, stored_event
from execmesh.replay.recorder import GroupRecorder

pytestmark = pytest.mark.services

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(n: int) -> StoredEvent:
    attributes = {"id": f"e{n}", "source": "/s", "type": "t", "subject": f"x{n % 7}"}
    return stored_event(attributes, {"n": n}, NOW)


def test_concurrent_deliveries_are_stored_once_each_and_told_which_were_new(
    mongo_database: Database[dict[str, Any]],
) -> None:
    recorder = GroupRecorder(mongo_database["events"])
    # Every event twice, concurrently: one of the two is new, the other a redelivery.
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(lambda n: (n % 300, recorder.record(event(n % 300))), range(600)))
    assert sorted(n for n, new in outcomes if new) == list(range(300))
    assert EventStore(mongo_database["events"]).count(EventFilter()) == 300


def test_a_store_that_refuses_fails_every_waiting_delivery_as_transient(
    mongo_database: Database[dict[str, Any]],
) -> None:
    recorder = GroupRecorder(mongo_database["events"])
    bad = StoredEvent(id="bad", source="/s", type="t", time=NOW, data={"$bad": 1})
    with pytest.raises(TransientError):
        recorder.record(bad)
    assert recorder.record(event(1)) is True
