"""Sending events: to ``K_SINK`` over HTTP in binary mode, or into a list for tests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol

import httpx

from execmesh.errors import ConfigError, TransientError
from execmesh.events import Payload
from execmesh.mesh.emission import (
    OutgoingEvent,
    apply_overrides,
    build_event,
    parse_ce_overrides,
    to_binary_http,
)
from execmesh.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 10.0


class Sender(Protocol):
    def send(self, event: OutgoingEvent) -> None:
        """Deliver ``event`` or raise ``TransientError``."""


class HttpSender:
    """POSTs events to one sink (a broker ingress, or any CloudEvents receiver) in binary mode.

    Thread-safe; keeps a pool of connections. Any failure, including a non-2xx answer,
    is a ``TransientError``: the caller's own delivery is then retried as a whole.
    """

    def __init__(
        self,
        sink_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        client: httpx.Client | None = None,
    ) -> None:
        if not sink_url:
            raise ConfigError("no sink URL: set K_SINK")
        self.sink_url = sink_url
        self._client = client or httpx.Client(timeout=timeout)

    def send(self, event: OutgoingEvent) -> None:
        headers, body = to_binary_http(event)
        try:
            response = self._client.post(self.sink_url, headers=headers, content=body)
        except httpx.HTTPError as error:
            raise TransientError(f"sink {self.sink_url} unreachable: {error!r}") from error
        _check_answer(response, self.sink_url, event)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncHttpSender:
    """``HttpSender`` for asyncio code (the API gateway)."""

    def __init__(
        self,
        sink_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not sink_url:
            raise ConfigError("no sink URL: set K_SINK")
        self.sink_url = sink_url
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def send(self, event: OutgoingEvent) -> None:
        headers, body = to_binary_http(event)
        try:
            response = await self._client.post(self.sink_url, headers=headers, content=body)
        except httpx.HTTPError as error:
            raise TransientError(f"sink {self.sink_url} unreachable: {error!r}") from error
        _check_answer(response, self.sink_url, event)

    async def aclose(self) -> None:
        await self._client.aclose()


class RecordingSender:
    """Keeps what it is given, in order; the sender of tests and dry runs."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEvent] = []
        self._lock = threading.Lock()

    def send(self, event: OutgoingEvent) -> None:
        with self._lock:
            self.sent.append(event)

    def of_type(self, ce_type: str) -> list[OutgoingEvent]:
        return [event for event in self.sent if event.type == ce_type]


class Emitter:
    """Emits events outside a CloudEvent request (pod_monitor, API gateway, CLI tools).

    Give ``cause`` (what this event follows from, e.g. ``"pod/<uid>/running"``) to get a
    deterministic id, so that re-emitting after a restart produces the same event.
    """

    def __init__(
        self, component: str, sender: Sender, overrides: Mapping[str, str] | None = None
    ) -> None:
        self.component = component
        self.sender = sender
        self.overrides = dict(overrides or {})

    @classmethod
    def from_settings(cls, component: str, settings: Settings) -> Emitter:
        """Sends to ``K_SINK`` with ``K_CE_OVERRIDES`` applied, as a SinkBinding configures."""
        return cls(
            component, HttpSender(settings.k_sink), parse_ce_overrides(settings.k_ce_overrides)
        )

    def emit(
        self,
        payload: Payload,
        *,
        cause: str | None = None,
        discriminator: str = "",
        subject: str | None = None,
        extensions: Mapping[str, str] | None = None,
    ) -> OutgoingEvent:
        event = build_event(
            payload,
            component=self.component,
            time=datetime.now(UTC),
            cause=cause,
            discriminator=discriminator,
            subject=subject,
            extensions=extensions,
        )
        return self.publish(event)

    def publish(self, event: OutgoingEvent) -> OutgoingEvent:
        event = apply_overrides(event, self.overrides)
        self.sender.send(event)
        logger.debug("emitted %s %s", event.type, event.id)
        return event


def _check_answer(response: httpx.Response, sink_url: str, event: OutgoingEvent) -> None:
    if not response.is_success:
        raise TransientError(
            f"sink {sink_url} answered {response.status_code} to {event.type} {event.id}: "
            f"{response.text[:200]!r}"
        )
