from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from execmesh.replay.eventstore import EventFilter, EventStore, stored_event

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(mongo_database: Database[dict[str, Any]]) -> EventStore:
    store = EventStore(mongo_database["events"])
    store.ensure_indexes()
    return store


def event(
    n: int, execution: str, ce_type: str = "io.execmesh.pod.created", **extensions: str
) -> Any:
    attributes = {
        "specversion": "1.0",
        "id": f"id-{n}",
        "source": "/execmesh/test",
        "type": ce_type,
        "subject": execution,
        "time": (T0 + timedelta(seconds=n)).isoformat(),
        "partitionkey": execution,
        **extensions,
    }
    data = {"execution_id": execution}
    if ce_type.endswith("requested"):
        data["user_id"] = f"user-of-{execution}"
    return stored_event(attributes, data, T0)


def test_an_event_delivered_twice_is_stored_once(store: EventStore) -> None:
    assert store.record(event(1, "a")) is True
    assert store.record(event(1, "a")) is False
    assert store.count(EventFilter()) == 1


def test_scanning_follows_event_time_and_resumes_after_a_cursor(store: EventStore) -> None:
    for n in (3, 1, 2, 5, 4):
        store.record(event(n, "a"))
    assert [e.id for e in store.iterate(EventFilter(), batch=2)] == [f"id-{n}" for n in range(1, 6)]


def test_filters_select_by_execution_type_time_and_user(store: EventStore) -> None:
    store.record(event(1, "a", "io.execmesh.execution.requested"))
    store.record(event(2, "a"))
    store.record(event(3, "b", "io.execmesh.execution.requested"))
    store.record(event(4, "b"))
    store.record(event(5, "a", replayedfrom="id-2", replaysession="s1"))
    assert store.count(EventFilter(execution_ids=["a"])) == 2
    assert store.count(EventFilter(types=["io.execmesh.pod.created"])) == 2
    assert store.count(EventFilter(exclude_types=["io.execmesh.pod.created"])) == 2
    assert (
        store.count(EventFilter(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4)))
        == 2
    )
    assert store.count(EventFilter(user_id="user-of-b")) == 2
    assert store.count(EventFilter(user_id="nobody")) == 0
    assert store.count(EventFilter(include_replayed=True)) == 5
