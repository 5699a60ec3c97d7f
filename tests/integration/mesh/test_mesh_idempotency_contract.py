"""One contract for every idempotency store: in memory and on the real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis

from execmesh.mesh import IdempotencyStore, InMemoryIdempotencyStore, RedisIdempotencyStore
from execmesh.settings import Settings
from tests.support.redis_keys import redis_client


@pytest.fixture
def prefix() -> str:
    return f"test:mesh:{uuid.uuid4().hex}"


def make_memory_store(prefix: str) -> Iterator[IdempotencyStore]:
    yield InMemoryIdempotencyStore()


def make_redis_store(prefix: str) -> Iterator[IdempotencyStore]:
    with redis_client(prefix) as client:
        yield RedisIdempotencyStore(client)


@pytest.fixture(
    params=[
        pytest.param(make_memory_store, id="memory"),
        pytest.param(make_redis_store, id="redis", marks=pytest.mark.services),
    ]
)
def store(request: pytest.FixtureRequest, prefix: str) -> Iterator[IdempotencyStore]:
    yield from request.param(prefix)


def test_a_key_never_marked_is_not_processed(store: IdempotencyStore, prefix: str) -> None:
    assert not store.is_processed(f"{prefix}:a")


def test_a_marked_key_is_processed(store: IdempotencyStore, prefix: str) -> None:
    store.mark_processed(f"{prefix}:a")

    assert store.is_processed(f"{prefix}:a")


def test_marking_one_key_leaves_the_others_alone(store: IdempotencyStore, prefix: str) -> None:
    store.mark_processed(f"{prefix}:a")

    assert not store.is_processed(f"{prefix}:b")


def test_marking_twice_is_harmless(store: IdempotencyStore, prefix: str) -> None:
    store.mark_processed(f"{prefix}:a")
    store.mark_processed(f"{prefix}:a")

    assert store.is_processed(f"{prefix}:a")


def test_a_marker_expires_after_its_ttl(store: IdempotencyStore, prefix: str) -> None:
    store.mark_processed(f"{prefix}:a", timedelta(seconds=2))
    assert store.is_processed(f"{prefix}:a")

    deadline = time.monotonic() + 5.0
    while store.is_processed(f"{prefix}:a") and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not store.is_processed(f"{prefix}:a")
    assert time.monotonic() < deadline


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1)])
def test_a_marker_needs_a_positive_ttl(
    store: IdempotencyStore, prefix: str, ttl: timedelta
) -> None:
    with pytest.raises(ValueError):
        store.mark_processed(f"{prefix}:a", ttl)


def test_a_reachable_store_answers_ping(store: IdempotencyStore) -> None:
    store.ping()


@pytest.mark.services
def test_a_redis_marker_carries_the_requested_ttl(prefix: str) -> None:
    client = redis.Redis.from_url(Settings.from_env().redis_url, socket_timeout=2.0)
    try:
        RedisIdempotencyStore(client).mark_processed(f"{prefix}:a", timedelta(hours=24))
        remaining_ms = client.pttl(f"{prefix}:a")
        client.delete(f"{prefix}:a")
    finally:
        client.close()

    assert 23.9 * 3600_000 < remaining_ms <= 24 * 3600_000
