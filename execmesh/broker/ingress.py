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


def build_app(topics: Mapping[str, str], event_log: EventLog) -> Starlette:
    """`topics` maps an ingress path (`/namespace/name`) to the broker's topic."""

    async def receive(request: Request) -> Response:
        path = f"/{request.path_params['namespace']}/{request.path_params['broker']}"
        topic = topics.get(path)
        if topic is None:
            return PlainTextResponse(f"no broker at {path}\n", status_code=404)
        # One plain dict: Starlette's Headers scans its raw list on every lookup.
        headers = dict(request.headers.items())
        try:
            body = await _read_body(request, headers.get("content-length"))
            event = from_http(headers, body)
        except TooLarge:
            return PlainTextResponse(f"event over {MAX_EVENT_BYTES} bytes\n", status_code=413)
        except InvalidEvent as error:
            return PlainTextResponse(f"{error}\n", status_code=400)
        return await _store(event_log, topic, event)

    async def healthy(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    # The event route first: the router tries routes in order, on every request.
    routes = [
        Route("/{namespace}/{broker}", receive, methods=["POST"]),
        Route("/{namespace}/{broker}/", receive, methods=["POST"]),
        Route("/healthz", healthy, methods=["GET"]),
        Route("/health/liveness", healthy, methods=["GET"]),
        Route("/health/readiness", healthy, methods=["GET"]),
    ]
    return Starlette(routes=routes)


async def _read_body(request: Request, declared: str | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise TooLarge
        chunks.append(chunk)
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
