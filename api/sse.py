"""Live lifecycle: events from the mesh (through the ``api`` Trigger) to Server-Sent Events.

Whichever replica the broker delivers an event to appends it to the execution's Redis stream
(once: a redelivered event id is skipped); every replica serving that execution's SSE clients
reads the stream, so the fan-out across replicas is Redis's. Stream entry ids are the SSE ids:
``Last-Event-ID`` resumes right after the last entry the client saw.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as redis

from api.ratelimit import PREFIX
from execmesh.errors import TransientError
from execmesh.events import TERMINAL_EXECUTION_TYPES
from execmesh.mesh import IncomingEvent

RETENTION_SECONDS = 86400
STREAM_MAXLEN = 1000

# The SSE event name of each lifecycle event the Trigger delivers.
NAMES = {
    "io.execmesh.execution.requested": "requested",
    "io.execmesh.execution.queued": "queued",
    "io.execmesh.execution.accepted": "accepted",
    "io.execmesh.pod.running": "running",
    "io.execmesh.execution.completed": "completed",
    "io.execmesh.execution.failed": "failed",
    "io.execmesh.execution.timed_out": "timed_out",
    "io.execmesh.execution.cancelled": "cancelled",
    "io.execmesh.execution.rejected": "rejected",
}
TERMINAL_NAMES = frozenset(NAMES[t] for t in TERMINAL_EXECUTION_TYPES)
# What an SSE client gets of each payload: the facts, never the (possibly large) output.
SHOWN_FIELDS = ("position", "exit_code", "signal", "error_type", "message", "code", "reason")

_APPEND = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


def stream_key(execution_id: str) -> str:
    return f"{PREFIX}:events:{execution_id}"


def sse_data(event: IncomingEvent, execution_id: str) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    shown = {name: data[name] for name in SHOWN_FIELDS if name in data}
    time = event.time.isoformat() if event.time else None
    return {"execution_id": execution_id, "type": event.type, "time": time, **shown}


def format_sse(entry_id: str, name: str, data: str) -> bytes:
    return f"id: {entry_id}\nevent: {name}\ndata: {data}\n\n".encode()


class LiveEvents:
    def __init__(self, client: redis.Redis, *, keepalive_seconds: float = 15.0) -> None:
        self.client = client
        self.keepalive_seconds = keepalive_seconds
        self._append = client.register_script(_APPEND)

    async def append(self, event: IncomingEvent) -> bool:
        """Add ``event`` to its execution's stream; False if it was there already."""
        execution_id = getattr(event.payload, "execution_id", None)
        name = NAMES.get(event.type)
        if not isinstance(execution_id, str) or name is None:
            return False
        data = json.dumps(sse_data(event, execution_id), separators=(",", ":"))
        keys = [f"{PREFIX}:seen:{event.source}:{event.id}", stream_key(execution_id)]
        try:
            added = await self._append(
                keys=keys, args=[RETENTION_SECONDS, STREAM_MAXLEN, name, data]
            )
        except redis.RedisError as error:
            raise TransientError(f"redis: live events: {error}") from error
        return bool(added)

    async def follow(
        self,
        execution_id: str,
        last_event_id: str | None,
        finished: Callable[[], Awaitable[str | None]],
    ) -> AsyncIterator[bytes]:
        """The SSE byte stream; ``finished`` gives the terminal status once the execution's
        document has one, so a stream whose terminal event was lost or expired still ends."""
        cursor = last_event_id or "0-0"
        key = stream_key(execution_id)
        block_ms = max(1, int(self.keepalive_seconds * 1000))
        while True:
            answer: Any = await self.client.xread({key: cursor}, count=100, block=block_ms)
            if not answer:
                status = await finished()
                if status is not None:
                    data = json.dumps({"execution_id": execution_id, "status": status})
                    yield format_sse(cursor, status, data)
                    return
                yield b": keep-alive\n\n"
                continue
            for entry_id, fields in answer[0][1]:
                cursor = _text(entry_id)
                name = _text(fields[b"event"])
                yield format_sse(cursor, name, _text(fields[b"data"]))
                if name in TERMINAL_NAMES:
                    return


def valid_event_id(value: str) -> bool:
    milliseconds, _, sequence = value.partition("-")
    return milliseconds.isdigit() and sequence.isdigit()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
