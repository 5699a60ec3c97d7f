"""Per-user protection in Redis: a request rate, executions in flight, live streams open.

The rate is a fixed one-second window per user (one ``INCR`` in a script), answered with the
``RateLimit`` header fields (draft-ietf-httpapi-ratelimit-headers) on every response and
``Retry-After`` on a 429. The in-flight quota is a sorted set of the user's unfinished
executions: a slot is taken at submission and given back when the API hears the terminal
event; a slot whose terminal event was never heard lapses after ``stale_after_ms``.

Open live event streams are counted the same way, across replicas: each holds a lease that it
renews while it runs and gives back when it ends; the lease of a replica that died lapses.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import redis.asyncio as redis

from execmesh.errors import TransientError

log = logging.getLogger(__name__)

PREFIX = "execmesh:api"
WINDOW_MS = 1000
# A stream renews its lease a few times within it (it wakes at least once per keep-alive).
STREAM_LEASE_MS = 60_000
STREAM_RENEW_SECONDS = 15.0

_RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""

_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={WINDOW_MS // 1000}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


def rate_decision(count: int, ttl_ms: int, limit: int) -> RateDecision:
    return RateDecision(
        allowed=count <= limit,
        limit=limit,
        remaining=max(0, limit - count),
        reset_seconds=max(1, math.ceil(ttl_ms / 1000)),
    )


class Protection:
    def __init__(
        self,
        client: redis.Redis,
        *,
        rate_per_second: int,
        max_active: int,
        stale_after_ms: int,
        max_streams: int,
    ) -> None:
        self.client = client
        self.rate_per_second = rate_per_second
        self.max_active = max_active
        self.stale_after_ms = stale_after_ms
        self.max_streams = max_streams
        self._rate = client.register_script(_RATE)
        self._take = client.register_script(_TAKE_SLOT)

    async def hit(self, user_id: str) -> RateDecision:
        try:
            count, ttl = await self._rate(keys=[f"{PREFIX}:rate:{user_id}"], args=[WINDOW_MS])
        except redis.RedisError as error:
            raise TransientError(f"redis: rate limit: {error}") from error
        return rate_decision(int(count), int(ttl), self.rate_per_second)

    async def take_slot(self, user_id: str, execution_id: str, now_ms: int) -> bool:
        """Whether the user may have one more execution in flight (idempotent per id)."""
        return await self._take_lease(
            _active(user_id), execution_id, now_ms, self.stale_after_ms, self.max_active, "quota"
        )

    async def release_slot(self, user_id: str, execution_id: str) -> None:
        try:
            await self.client.zrem(_active(user_id), execution_id)
        except redis.RedisError as error:
            raise TransientError(f"redis: quota: {error}") from error

    async def open_stream(self, user_id: str, stream_id: str) -> bool:
        """Whether the user may open one more live stream; if so, its lease is taken."""
        return await self._take_lease(
            _streams(user_id), stream_id, _now_ms(), STREAM_LEASE_MS, self.max_streams, "streams"
        )

    async def _take_lease(
        self, key: str, member: str, now_ms: int, lapse_ms: int, capacity: int, what: str
    ) -> bool:
        """A place in ``key`` for ``member`` unless ``capacity`` live ones are there; a lease
        older than ``lapse_ms`` no longer counts."""
        args: list[int | str] = [now_ms - lapse_ms, capacity, member, now_ms, lapse_ms]
        try:
            taken = await self._take(keys=[key], args=args)
        except redis.RedisError as error:
            raise TransientError(f"redis: {what}: {error}") from error
        return bool(taken)

    async def while_open(
        self, user_id: str, stream_id: str, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """``chunks``, renewing the stream's lease as they come; the lease is given back when
        the stream ends, however it ends."""
        renewed = time.monotonic()
        try:
            async for chunk in chunks:
                if time.monotonic() - renewed >= STREAM_RENEW_SECONDS:
                    await self._renew_stream(user_id, stream_id)
                    renewed = time.monotonic()
                yield chunk
        finally:
            # A client that went away cancels the response; the lease is given back anyway.
            with anyio.CancelScope(shield=True):
                try:
                    await self.client.zrem(_streams(user_id), stream_id)
                except redis.RedisError as error:
                    log.warning("stream %s: lease not given back: %s", stream_id, error)

    async def _renew_stream(self, user_id: str, stream_id: str) -> None:
        # Best effort: an open stream is not cut for a missed renewal; at worst its lease
        # lapses and the user may open one more.
        key = _streams(user_id)
        try:
            async with self.client.pipeline(transaction=False) as pipeline:
                pipeline.zadd(key, {stream_id: _now_ms()})
                pipeline.pexpire(key, STREAM_LEASE_MS)
                await pipeline.execute()
        except redis.RedisError as error:
            log.warning("stream %s: lease not renewed: %s", stream_id, error)


def _active(user_id: str) -> str:
    return f"{PREFIX}:active:{user_id}"


def _streams(user_id: str) -> str:
    return f"{PREFIX}:streams:{user_id}"


def _now_ms() -> int:
    return int(time.time() * 1000)
