"""The mesh client and the function contract every execmesh function is built on.

In a function: ``cloud_event_function(component, handler, start=...)`` is the view that
functions-framework serves; the handler gets an ``IncomingEvent`` and a ``Context`` and
returns (or ``ctx.emit``-s) ``Emission``-s. Outside a request: ``Emitter`` (sync) or
``build_event`` + ``AsyncHttpSender``. In tests: ``Runtime`` with ``InMemoryIdempotencyStore``
and ``RecordingSender``, served by ``TestClient(asgi_app(view))``.
"""

from __future__ import annotations

from execmesh.mesh.emission import (
    Emission,
    OutgoingEvent,
    build_event,
    derive_event_id,
    parse_ce_overrides,
    to_binary_http,
)
from execmesh.mesh.envelope import IncomingEvent, decode_event
from execmesh.mesh.function import (
    CloudEventFunction,
    Context,
    Reply,
    Runtime,
    asgi_app,
    build_runtime,
    cloud_event_function,
)
from execmesh.mesh.idempotency import (
    IdempotencyStore,
    InMemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from execmesh.mesh.sender import AsyncHttpSender, Emitter, HttpSender, RecordingSender, Sender

__all__ = [
    "AsyncHttpSender",
    "CloudEventFunction",
    "Context",
    "Emission",
    "Emitter",
    "HttpSender",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "IncomingEvent",
    "OutgoingEvent",
    "RecordingSender",
    "RedisIdempotencyStore",
    "Reply",
    "Runtime",
    "Sender",
    "asgi_app",
    "build_event",
    "build_runtime",
    "cloud_event_function",
    "decode_event",
    "derive_event_id",
    "parse_ce_overrides",
    "to_binary_http",
]
