"""The broker's ingress: `POST /{namespace}/{broker}` stores a CloudEvent in the broker's topic.

202 only once Kafka acknowledged the record (acks=all), so a 202 is a promise of delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from execmesh.broker.cloudevent import Event, from_http
from execmesh.broker.kafka_binding import KafkaRecord, to_record
from execmesh.errors import InvalidEvent, PermanentError, TransientError

log = logging.getLogger(__name__)

# The Knative Kafka broker's default: Kafka's own message.max.bytes of 1 MiB.
MAX_EVENT_BYTES = 1024 * 1024


class EventLog(Protocol):
    """Where accepted events go: a Kafka topic, or a list in tests."""

    async def append(self, topic: str, record: KafkaRecord) -> None:
        """Return once the record is durably stored.

        Raises TransientError when Kafka does not take it in time, PermanentError when it
        never will (a record over Kafka's size limit).
        """


class TooLarge(Exception):
    pass


def build_app(topics: Mapping[str, str], event_log: EventLog) -> Ingress:
    """`topics` maps an ingress path (`/namespace/name`) to the broker's topic."""
    return Ingress(topics, event_log)


class Ingress:
    """The event path served straight on ASGI, everything else by a small Starlette app.

    Starlette's middleware and router cost more per event than parsing and storing it, so
    a POST to a known broker skips them; health checks, 404 and 405 stay Starlette's.
    """

    def __init__(self, topics: Mapping[str, str], event_log: EventLog) -> None:
        self._topics = dict(topics)
        self._event_log = event_log
        self._others = Starlette(
            routes=[
                Route("/healthz", _healthy, methods=["GET"]),
                Route("/health/liveness", _healthy, methods=["GET"]),
                Route("/health/readiness", _healthy, methods=["GET"]),
                Route("/{namespace}/{broker}", _unknown_broker, methods=["POST"]),
                Route("/{namespace}/{broker}/", _unknown_broker, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            topic = self._topics.get(scope["path"].rstrip("/"))
            if topic is not None:
                response = await self._event(topic, scope, receive)
                await response(scope, receive, send)
                return
        await self._others(scope, receive, send)

    async def _event(self, topic: str, scope: Scope, receive: Receive) -> Response:
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        try:
            body = await _read_body(receive, headers.get("content-length"))
            event = from_http(headers, body)
        except TooLarge:
            return PlainTextResponse(f"event over {MAX_EVENT_BYTES} bytes\n", status_code=413)
        except InvalidEvent as error:
            return PlainTextResponse(f"{error}\n", status_code=400)
        return await _store(self._event_log, topic, event)


async def _healthy(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def _unknown_broker(request: Request) -> Response:
    return PlainTextResponse(f"no broker at {request.url.path}\n", status_code=404)


async def _read_body(receive: Receive, declared: str | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidEvent("client disconnected before the body was complete")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _store(event_log: EventLog, topic: str, event: Event) -> Response:
    try:
        await event_log.append(topic, to_record(event))
    except TransientError as error:
        log.warning("event %s not stored in %s: %s", event.get("id"), topic, error)
        return PlainTextResponse(f"event not stored: {error}\n", status_code=503)
    except PermanentError as error:
        return PlainTextResponse(f"event refused by Kafka: {error}\n", status_code=413)
    return Response(status_code=202)
