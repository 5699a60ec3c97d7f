from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from execmesh.errors import TransientError
from execmesh.events import ExecutionCancelRequested
from execmesh.mesh import IncomingEvent, InMemoryIdempotencyStore, RedisIdempotencyStore
from execmesh.mesh.idempotency import marker_key

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def event(source: str, event_id: str) -> IncomingEvent:
    payload = ExecutionCancelRequested(execution_id="ex-1")
    return IncomingEvent(id=event_id, type=payload.TYPE, source=source, payload=payload)


def test_a_marker_key_names_the_function_the_source_and_the_id() -> None:
    key = marker_key("saga", event("/execmesh/api", "evt-1"))

    assert key == "execmesh:processed:saga:/execmesh/api:evt-1"


def test_marker_keys_differ_per_function_and_per_source() -> None:
    keys = {
        marker_key("saga", event("/execmesh/api", "evt-1")),
        marker_key("coordinator", event("/execmesh/api", "evt-1")),
        marker_key("saga", event("/execmesh/replay", "evt-1")),
    }

    assert len(keys) == 3


def test_an_in_memory_marker_lives_exactly_its_ttl() -> None:
    now = [100.0]
    store = InMemoryIdempotencyStore(clock=lambda: now[0])
    store.mark_processed("k", timedelta(seconds=10))

    now[0] = 109.999
    assert store.is_processed("k")
    now[0] = 110.0
    assert not store.is_processed("k")


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.is_processed("k"),
        lambda store: store.mark_processed("k"),
        lambda store: store.ping(),
    ],
)
def test_an_unreachable_redis_is_a_transient_error(
    call: Callable[[RedisIdempotencyStore], object],
) -> None:
    store = RedisIdempotencyStore.from_url(UNREACHABLE_REDIS, timeout_seconds=0.5)

    with pytest.raises(TransientError):
        call(store)
