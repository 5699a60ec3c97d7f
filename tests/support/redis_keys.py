from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from execmesh.settings import Settings


def delete_keys(client: redis.Redis, pattern: str) -> None:
    keys = list(client.scan_iter(pattern))
    if keys:
        client.delete(*keys)


@contextmanager
def redis_client(prefix: str, url: str | None = None) -> Iterator[redis.Redis]:
    """A client of the shared Redis (or ``url``); the keys under ``prefix`` go when it closes."""
    client = redis.Redis.from_url(url or Settings.from_env().redis_url, socket_timeout=5.0)
    try:
        yield client
    finally:
        delete_keys(client, f"{prefix}:*")
        client.close()
