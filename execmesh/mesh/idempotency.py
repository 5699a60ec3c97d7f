"""Idempotency markers: which input events a function has already fully processed.

A marker is written only after the handler's effects and all its emissions succeeded, so
a marker never hides work that did not happen. It expires after a TTL: the broker's retries
and the dead-letter queue's redeliveries all happen well within it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

import redis

from execmesh.errors import TransientError
from execmesh.mesh.envelope import IncomingEvent

DEFAULT_TTL = timedelta(hours=24)
KEY_PREFIX = "execmesh:processed"


class IdempotencyStore(Protocol):
    def is_processed(self, key: str) -> bool: ...

    def mark_processed(self, key: str, ttl: timedelta = DEFAULT_TTL) -> None: ...

    def ping(self) -> None:
        """Raise ``TransientError`` if the store cannot be reached."""


def marker_key(component: str, event: IncomingEvent) -> str:
    # CloudEvents makes (source, id) unique, not id alone.
    return f"{KEY_PREFIX}:{component}:{event.source}:{event.id}"


class InMemoryIdempotencyStore:
    """Markers in a dict, for tests and single-process tools; ``clock`` is in seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expiries: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_processed(self, key: str) -> bool:
        with self._lock:
            expiry = self._expiries.get(key)
            if expiry is not None and expiry <= self._clock():
                del self._expiries[key]
                expiry = None
            return expiry is not None

    def mark_processed(self, key: str, ttl: timedelta = DEFAULT_TTL) -> None:
        _check_ttl(ttl)
        with self._lock:
            self._expiries[key] = self._clock() + ttl.total_seconds()

    def ping(self) -> None:
        return None


class RedisIdempotencyStore:
    """Markers as Redis keys with an expiry. Any Redis failure is a ``TransientError``."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str, *, timeout_seconds: float = 2.0) -> RedisIdempotencyStore:
        return cls(
            redis.Redis.from_url(
                url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
            )
        )

    def is_processed(self, key: str) -> bool:
        try:
            return bool(self._client.exists(key))
        except redis.RedisError as error:
            raise TransientError(f"redis: cannot read idempotency marker: {error}") from error

    def mark_processed(self, key: str, ttl: timedelta = DEFAULT_TTL) -> None:
        _check_ttl(ttl)
        try:
            self._client.set(key, b"1", px=max(1, int(ttl.total_seconds() * 1000)))
        except redis.RedisError as error:
            raise TransientError(f"redis: cannot write idempotency marker: {error}") from error

    def ping(self) -> None:
        try:
            self._client.ping()
        except redis.RedisError as error:
            raise TransientError(f"redis unreachable: {error}") from error

    def close(self) -> None:
        self._client.close()


def _check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"an idempotency marker needs a positive TTL, not {ttl}")
