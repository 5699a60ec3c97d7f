"""The function contract at the HTTP edge: decode, deduplicate, run the handler, emit, answer.

A function module defines a handler and exposes the view functions-framework serves::

    def handle(event: IncomingEvent, ctx: Context[None]) -> list[Emission]:
        return [Emission(SagaCompleted(execution_id=..., status=...))]

    saga = cloud_event_function("saga", handle)   # functions-framework --target saga

The view is an ASGI one, so functions-framework serves it with uvicorn rather than Flask on
gunicorn's thread worker: a third of the CPU per request (bench/pipeline). Handlers block on
their stores, so each runs on a worker thread, at most ``THREADS`` at once; the liveness
probe is answered on the event loop, so a backlog never makes a live function look dead.

Answers: 202 with an empty body once the handler's effects and emissions succeeded (or the
event was already processed); 400 for an event that can never succeed and 422 for an
unknown schema version (the broker does not retry 4xx); 503/500 for anything that may work
on a retry. Never a 2xx with a body: the Kafka broker would dead-letter it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeAlias, TypeVar, overload

from functions_framework import _function_registry, aio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from execmesh.errors import ConfigError, PermanentError, TransientError
from execmesh.events import Payload, UnknownSchemaVersion
from execmesh.mesh.emission import (
    Emission,
    OutgoingEvent,
    apply_overrides,
    event_from_emission,
    parse_ce_overrides,
)
from execmesh.mesh.envelope import REPLAY_REPROCESS, IncomingEvent, decode_event
from execmesh.mesh.idempotency import (
    DEFAULT_TTL,
    IdempotencyStore,
    RedisIdempotencyStore,
    marker_key,
)
from execmesh.mesh.sender import HttpSender, Sender
from execmesh.settings import Settings

logger = logging.getLogger(__name__)

D = TypeVar("D")

LIVENESS_PATH = "/health/liveness"
READINESS_PATH = "/health/readiness"
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Runtime(Generic[D]):
    """What a function process builds once: the mesh clients and the handler's dependencies."""

    settings: Settings
    deps: D
    idempotency: IdempotencyStore
    sender: Sender
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Context(Generic[D]):
    """What a handler sees besides the event: its dependencies, settings, and ``emit``."""

    component: str
    event: IncomingEvent
    deps: D
    settings: Settings
    emissions: list[Emission] = field(default_factory=list)

    def emit(
        self,
        payload: Payload,
        *,
        subject: str | None = None,
        discriminator: str = "",
        extensions: Mapping[str, str] | None = None,
    ) -> None:
        """Queue an event; it is sent after the handler returned, before the event is acked."""
        self.emissions.append(Emission(payload, subject, discriminator, dict(extensions or {})))


Handler: TypeAlias = Callable[[IncomingEvent, Context[D]], Iterable[Emission] | None]
View: TypeAlias = Callable[[Request], Awaitable[Response]]
HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def build_runtime(settings: Settings, start: Callable[[Settings], D]) -> Runtime[D]:
    """The production runtime: Redis markers, ``K_SINK`` over HTTP, ``K_CE_OVERRIDES``."""
    return Runtime(
        settings=settings,
        deps=start(settings),
        idempotency=RedisIdempotencyStore.from_url(settings.redis_url),
        sender=HttpSender(settings.k_sink) if settings.k_sink else _NoSink(),
        overrides=parse_ce_overrides(settings.k_ce_overrides),
    )


class CloudEventFunction(Generic[D]):
    """One function: its handler, and its runtime built on first use (after any fork)."""

    def __init__(
        self,
        component: str,
        handler: Handler[D],
        *,
        start: Callable[[Settings], D],
        runtime: Runtime[D] | None = None,
        idempotency_ttl: timedelta = DEFAULT_TTL,
        open_types: bool = False,
        markers: bool = True,
    ) -> None:
        self.component = component
        self.handler = handler
        self.idempotency_ttl = idempotency_ttl
        self.open_types = open_types
        self.markers = markers
        self._start = start
        self._runtime = runtime
        self._lock = threading.Lock()
        self._settings = runtime.settings if runtime is not None else Settings.from_env()
        prefix = component.replace("-", "_")
        self._handlers = ThreadPoolExecutor(self._settings.handler_threads, f"{prefix}-handler")
        self._probes = ThreadPoolExecutor(1, f"{prefix}-probe")

    def runtime(self) -> Runtime[D]:
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = build_runtime(self._settings, self._start)
        return self._runtime

    async def serve(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """``respond`` for the event loop: off it, except the liveness probe, which does no I/O.

        The readiness probe has a thread of its own, so a backlog of events does not hold it.
        """
        if path == LIVENESS_PATH:
            return self._health(method, path)
        threads = self._probes if path == READINESS_PATH else self._handlers
        respond = functools.partial(self.respond, method, path, headers, body)
        return await asyncio.get_running_loop().run_in_executor(threads, respond)

    def respond(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if path in (LIVENESS_PATH, READINESS_PATH):
            return self._health(method, path)
        if method != "POST":
            return _problem(405, "method not allowed", f"{method} {path}", {"Allow": "POST"})
        try:
            event = decode_event(headers, body, open_types=self.open_types)
            self.process(event)
        except UnknownSchemaVersion as error:
            return _refused(422, error)
        except PermanentError as error:
            return _refused(400, error)
        except TransientError as error:
            logger.warning("%s: retry later: %s", self.component, error)
            return _problem(503, "temporarily unavailable", str(error))
        except Exception as error:
            logger.exception("%s: handler failed", self.component)
            return _problem(500, "internal error", type(error).__name__)
        return Reply(202)

    def process(self, event: IncomingEvent) -> bool:
        """Run the handler once for ``event``; False if it had already been processed."""
        runtime = self.runtime()
        key = marker_key(self.component, event)
        if self.markers and runtime.idempotency.is_processed(key):
            logger.info("%s: %s %s already processed", self.component, event.type, event.id)
            return False
        if self._ignores_replay(event):
            logger.info("%s: %s %s is a replay; ignored", self.component, event.type, event.id)
            return False
        ctx = Context(self.component, event, runtime.deps, runtime.settings)
        returned = self.handler(event, ctx)
        outgoing = self._outgoing([*ctx.emissions, *(returned or ())], event, runtime)
        for emitted in outgoing:
            runtime.sender.send(emitted)
        # A crash here leaves effects and emissions without a marker: the redelivery runs the
        # handler again, which is safe because effects are idempotent and emitted ids are
        # derived from the input id, so consumers deduplicate what is sent twice.
        if self.markers:
            runtime.idempotency.mark_processed(key, self.idempotency_ttl)
        logger.debug("%s: %s %s -> %d events", self.component, event.type, event.id, len(outgoing))
        return True

    def _ignores_replay(self, event: IncomingEvent) -> bool:
        # A replay must not start a second run: the pipeline acts on replayed events only when
        # the session asked for it. Open functions (recorder, dead letters) take everything.
        return (
            event.is_replay
            and not self.open_types
            and event.extensions.get(REPLAY_REPROCESS) != "true"
        )

    def _outgoing(
        self, emissions: list[Emission], cause: IncomingEvent, runtime: Runtime[D]
    ) -> list[OutgoingEvent]:
        now = datetime.now(UTC)
        events = [
            apply_overrides(
                event_from_emission(emission, cause, component=self.component, time=now),
                runtime.overrides,
            )
            for emission in emissions
        ]
        seen: set[str] = set()
        for event in events:
            if event.id in seen:
                raise ValueError(
                    f"two {event.type} emissions for subject {event.subject!r} "
                    "need distinct discriminators"
                )
            seen.add(event.id)
        return events

    def _health(self, method: str, path: str) -> Reply:
        if method not in ("GET", "HEAD"):
            return _problem(405, "method not allowed", f"{method} {path}", {"Allow": "GET"})
        if path == READINESS_PATH:
            try:
                self.runtime().idempotency.ping()
            except Exception as error:
                logger.warning("%s: not ready: %s", self.component, error)
                return _problem(503, "not ready", str(error))
        return Reply(200, b'{"status":"ok"}', "application/json")


@overload
def cloud_event_function(
    component: str,
    handler: Handler[None],
    *,
    runtime: Runtime[None] | None = None,
    idempotency_ttl: timedelta = DEFAULT_TTL,
    open_types: bool = False,
    markers: bool = True,
) -> View: ...


@overload
def cloud_event_function(
    component: str,
    handler: Handler[D],
    *,
    start: Callable[[Settings], D],
    runtime: Runtime[D] | None = None,
    idempotency_ttl: timedelta = DEFAULT_TTL,
    open_types: bool = False,
    markers: bool = True,
) -> View: ...


def cloud_event_function(
    component: str,
    handler: Handler[Any],
    *,
    start: Callable[[Settings], Any] | None = None,
    runtime: Runtime[Any] | None = None,
    idempotency_ttl: timedelta = DEFAULT_TTL,
    open_types: bool = False,
    markers: bool = True,
) -> View:
    """The functions-framework ``http`` view of a CloudEvent handler.

    ``start(settings)`` builds the handler's own clients once per process; they reach the
    handler as ``ctx.deps``. Tests pass a ready ``runtime`` (in-memory store, recording sender).
    ``open_types`` takes any valid CloudEvent, replays included (see ``decode_event``).
    ``markers=False`` for a handler that is idempotent by itself, and emits nothing it would
    not emit again: no idempotency markers, two Redis round trips fewer per event.
    """
    function = CloudEventFunction(
        component,
        handler,
        start=start or _no_deps,
        runtime=runtime,
        idempotency_ttl=idempotency_ttl,
        open_types=open_types,
        markers=markers,
    )

    async def view(request: Request) -> Response:
        body = await request.body()
        reply = await function.serve(request.method, request.url.path, request.headers, body)
        return to_response(reply)

    view.__name__ = view.__qualname__ = component.replace("-", "_")
    aio.http(view)
    _register_target_as_asgi_http()
    return view


def asgi_app(view: View) -> Starlette:
    """An app routing every path and method to ``view``, as functions-framework does."""
    return Starlette(routes=[Route("/{path:path}", view, methods=HTTP_METHODS)])


def to_response(reply: Reply) -> Response:
    return Response(
        reply.body, reply.status, headers=dict(reply.headers), media_type=reply.content_type
    )


def _register_target_as_asgi_http() -> None:
    # functions-framework looks the signature type and the server up by the --target name,
    # which it puts in FUNCTION_TARGET before loading the module; a target that is an alias
    # (``handle = saga``) would otherwise be served by Flask, as FUNCTION_SIGNATURE_TYPE says
    # (a deployment may say "cloudevent"). A function the module registered itself keeps its
    # own registration.
    target = os.environ.get("FUNCTION_TARGET")
    if target and target not in _function_registry.REGISTRY_MAP:
        _function_registry.REGISTRY_MAP[target] = _function_registry.HTTP_SIGNATURE_TYPE
        _function_registry.ASGI_FUNCTIONS.add(target)


class _NoSink:
    def send(self, event: OutgoingEvent) -> None:
        raise ConfigError(f"cannot emit {event.type}: K_SINK is not set")


def _no_deps(settings: Settings) -> None:
    return None


def _refused(status: int, error: Exception) -> Reply:
    logger.warning("refused with %d: %s", status, error)
    return _problem(status, "event refused", str(error))


def _problem(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> Reply:
    document = {"title": title, "status": status, "detail": detail[:500]}
    return Reply(status, json.dumps(document).encode(), PROBLEM_JSON, dict(headers or {}))
