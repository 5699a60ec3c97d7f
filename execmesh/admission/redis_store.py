"""The admission state in Redis: every operation is one Lua script, hence atomic.

Keys, under ``prefix`` (``execmesh:admission`` by default):
``queue`` (zset: execution id by priority rank * 2^40 + arrival number), ``running`` (zset:
execution id by lease expiry), ``users`` (hash: running count per user), ``usage`` (hash:
cpu and memory held), ``seq`` (arrival counter), ``exec:<id>`` (hash: one execution's
ticket and state; a finished one expires after the record TTL) and ``cause:<key>`` (the
JSON outcome of one input event, expiring after the record TTL).

The scripts build the key names from the prefix instead of declaring them, so all keys must
live on one Redis node (no cluster sharding).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from execmesh.admission.store import (
    DEFAULT_RECORD_TTL_MS,
    PRIORITY_RANK,
    SCAN_LIMIT,
    Admission,
    Capacity,
    Outcome,
    State,
    Ticket,
    Usage,
)
from execmesh.errors import TransientError

DEFAULT_PREFIX = "execmesh:admission"

_PRELUDE = """
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local max_user = tonumber(ARGV[3])
local max_global = tonumber(ARGV[4])
local cpu_budget = tonumber(ARGV[5])
local mem_budget = tonumber(ARGV[6])
local ttl_ms = tonumber(ARGV[7])
local scan_limit = tonumber(ARGV[8])
local cause_key = prefix .. ':cause:' .. ARGV[9]
local queue = prefix .. ':queue'
local running = prefix .. ':running'
local users = prefix .. ':users'
local usage = prefix .. ':usage'

local recorded = redis.call('GET', cause_key)
if recorded then return recorded end

local result = {state = 'unknown', position = -1, admitted = {}, expired = {},
                released = false, cancelled = false}

local function exec_key(id) return prefix .. ':exec:' .. id end

local function admit()
  local cursor = 0
  local scanned = 0
  while redis.call('ZCARD', running) < max_global and scanned < scan_limit do
    local ids = redis.call('ZRANGE', queue, cursor, cursor)
    if #ids == 0 then break end
    scanned = scanned + 1
    local id = ids[1]
    local e = exec_key(id)
    local f = redis.call('HMGET', e, 'user', 'cpu', 'mem', 'lease_ms', 'body')
    local cpu, mem = tonumber(f[2]), tonumber(f[3])
    if not f[1] then
      -- An entry whose execution record is gone must not stall the queue.
      redis.call('ZREM', queue, id)
    elseif tonumber(redis.call('HGET', users, f[1]) or '0') >= max_user then
      cursor = cursor + 1
    else
      local held = redis.call('HMGET', usage, 'cpu', 'mem')
      if tonumber(held[1] or '0') + cpu > cpu_budget
          or tonumber(held[2] or '0') + mem > mem_budget then
        break
      end
      local expires = now + tonumber(f[4])
      redis.call('ZREM', queue, id)
      redis.call('HSET', e, 'state', 'running', 'expires', expires)
      redis.call('ZADD', running, expires, id)
      redis.call('HINCRBY', users, f[1], 1)
      redis.call('HINCRBY', usage, 'cpu', cpu)
      redis.call('HINCRBY', usage, 'mem', mem)
      table.insert(result.admitted, {id, expires, f[5]})
    end
  end
end

local function finish(id)
  local e = exec_key(id)
  local f = redis.call('HMGET', e, 'state', 'user', 'cpu', 'mem')
  local before = f[1] or 'unknown'
  if before == 'running' then
    redis.call('ZREM', running, id)
    if redis.call('HINCRBY', users, f[2], -1) <= 0 then redis.call('HDEL', users, f[2]) end
    redis.call('HINCRBY', usage, 'cpu', -tonumber(f[3]))
    redis.call('HINCRBY', usage, 'mem', -tonumber(f[4]))
  elseif before == 'queued' then
    redis.call('ZREM', queue, id)
  end
  -- Also a tombstone for an execution ended before it was submitted: it is never admitted.
  redis.call('HSET', e, 'state', 'done')
  -- The body (which holds the script) is no longer needed: keep only the tombstone.
  redis.call('HDEL', e, 'body')
  redis.call('PEXPIRE', e, ttl_ms)
  return before
end

local function record()
  local encoded = cjson.encode(result)
  redis.call('SET', cause_key, encoded, 'PX', ttl_ms)
  return encoded
end
"""

_SUBMIT = """
local id = ARGV[10]
local e = exec_key(id)
if redis.call('EXISTS', e) == 0 then
  local n = redis.call('INCR', prefix .. ':seq')
  redis.call('HSET', e, 'state', 'queued', 'user', ARGV[11], 'cpu', ARGV[13], 'mem', ARGV[14],
             'lease_ms', ARGV[15], 'body', ARGV[16])
  redis.call('ZADD', queue, tonumber(ARGV[12]) * 1099511627776 + n, id)
  admit()
end
local f = redis.call('HMGET', e, 'state', 'expires', 'body')
result.state = f[1]
if f[1] == 'queued' then
  result.position = redis.call('ZRANK', queue, id)
elseif f[1] == 'running' then
  local announced = false
  for _, a in ipairs(result.admitted) do
    if a[1] == id then announced = true end
  end
  if not announced then table.insert(result.admitted, {id, tonumber(f[2]), f[3]}) end
end
return record()
"""

_RELEASE = """
result.released = finish(ARGV[10]) == 'running'
result.state = 'done'
admit()
return record()
"""

_CANCEL = """
local id = ARGV[10]
local state = redis.call('HGET', exec_key(id), 'state')
result.state = state or 'unknown'
if state == 'queued' then
  finish(id)
  result.state = 'done'
  result.cancelled = true
  admit()
end
return record()
"""

_EXPIRE = """
local lapsed = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, scan_limit)
for _, id in ipairs(lapsed) do
  finish(id)
  table.insert(result.expired, id)
end
admit()
return record()
"""


class RedisAdmissionStore:
    """``AdmissionStore`` on Redis. Any Redis failure is a ``TransientError``."""

    def __init__(
        self,
        client: redis.Redis,
        capacity: Capacity,
        *,
        prefix: str = DEFAULT_PREFIX,
        record_ttl_ms: int = DEFAULT_RECORD_TTL_MS,
    ) -> None:
        self.capacity = capacity
        self.prefix = prefix
        self.record_ttl_ms = record_ttl_ms
        self._client = client
        self._submit = client.register_script(_PRELUDE + _SUBMIT)
        self._release = client.register_script(_PRELUDE + _RELEASE)
        self._cancel = client.register_script(_PRELUDE + _CANCEL)
        self._expire = client.register_script(_PRELUDE + _EXPIRE)

    @classmethod
    def from_url(
        cls, url: str, capacity: Capacity, *, timeout_seconds: float = 2.0
    ) -> RedisAdmissionStore:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        return cls(client, capacity)

    def submit(self, ticket: Ticket, cause: str, now_ms: int) -> Outcome:
        return self._run(
            self._submit,
            cause,
            now_ms,
            ticket.execution_id,
            ticket.user_id,
            PRIORITY_RANK[ticket.priority],
            ticket.cpu_millis,
            ticket.memory_mb,
            ticket.lease_ms,
            ticket.body,
        )

    def release(self, execution_id: str, cause: str, now_ms: int) -> Outcome:
        return self._run(self._release, cause, now_ms, execution_id)

    def cancel(self, execution_id: str, cause: str, now_ms: int) -> Outcome:
        return self._run(self._cancel, cause, now_ms, execution_id)

    def expire(self, cause: str, now_ms: int) -> Outcome:
        return self._run(self._expire, cause, now_ms)

    def position(self, execution_id: str) -> int | None:
        try:
            rank: Any = self._client.zrank(f"{self.prefix}:queue", execution_id)
        except redis.RedisError as error:
            raise TransientError(f"redis: cannot read the admission queue: {error}") from error
        return None if rank is None else int(rank)

    def usage(self) -> Usage:
        pipe = self._client.pipeline(transaction=True)
        pipe.zcard(f"{self.prefix}:running")
        pipe.zcard(f"{self.prefix}:queue")
        pipe.hgetall(f"{self.prefix}:users")
        pipe.hmget(f"{self.prefix}:usage", "cpu", "mem")
        try:
            running, queued, users, (cpu, memory) = pipe.execute()
        except redis.RedisError as error:
            raise TransientError(f"redis: cannot read admission usage: {error}") from error
        per_user = {key.decode(): int(count) for key, count in users.items()}
        return Usage(int(running), int(queued), per_user, int(cpu or 0), int(memory or 0))

    def ping(self) -> None:
        try:
            self._client.ping()
        except redis.RedisError as error:
            raise TransientError(f"redis unreachable: {error}") from error

    def close(self) -> None:
        self._client.close()

    def _run(self, script: Any, cause: str, now_ms: int, *args: object) -> Outcome:
        capacity = self.capacity
        argv = [
            self.prefix,
            int(now_ms),
            capacity.max_per_user,
            capacity.max_global,
            capacity.cpu_millis,
            capacity.memory_mb,
            self.record_ttl_ms,
            SCAN_LIMIT,
            cause,
            *args,
        ]
        try:
            raw = script(keys=[], args=argv)
        except redis.RedisError as error:
            raise TransientError(f"redis: admission script failed: {error}") from error
        return _outcome(json.loads(raw))


def _outcome(data: dict[str, Any]) -> Outcome:
    # cjson encodes an empty Lua table as an object, not a list.
    admitted = data.get("admitted") or []
    expired = data.get("expired") or []
    position = int(data.get("position", -1))
    state: State = data.get("state", "unknown")
    return Outcome(
        state=state,
        position=None if position < 0 else position,
        admitted=tuple(Admission(str(a[0]), int(a[1]), str(a[2])) for a in admitted),
        released=bool(data.get("released")),
        cancelled=bool(data.get("cancelled")),
        expired=tuple(str(id) for id in expired),
    )
