from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from execmesh.errors import ConfigError, TransientError
from execmesh.events import ExecutionCancelled
from execmesh.mesh import (
    AsyncHttpSender,
    Emitter,
    HttpSender,
    RecordingSender,
    build_event,
    derive_event_id,
)
from execmesh.settings import Settings

SINK = "http://127.0.0.1:19501/execmesh/default"
CANCELLED = ExecutionCancelled(execution_id="ex-1", reason="user")
EVENT = build_event(CANCELLED, id="id-1", component="saga", time=datetime.now(UTC))


def answering(status: int, received: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(status)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_an_event_is_posted_to_the_sink_in_binary_mode() -> None:
    received: list[httpx.Request] = []

    HttpSender(SINK, client=answering(202, received)).send(EVENT)

    (request,) = received
    assert (request.method, str(request.url)) == ("POST", SINK)
    assert request.headers["ce-id"] == "id-1"
    assert request.headers["ce-type"] == CANCELLED.TYPE
    assert request.headers["ce-partitionkey"] == "ex-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == CANCELLED.to_data()


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_a_non_2xx_answer_is_a_transient_error(status: int) -> None:
    sender = HttpSender(SINK, client=answering(status, []))

    with pytest.raises(TransientError, match=str(status)):
        sender.send(EVENT)


def test_an_unreachable_sink_is_a_transient_error() -> None:
    with HttpSender("http://127.0.0.1:1/", timeout=1.0) as sender, pytest.raises(TransientError):
        sender.send(EVENT)


def test_a_sender_needs_a_sink() -> None:
    with pytest.raises(ConfigError):
        HttpSender("")


def test_the_async_sender_posts_the_same_request() -> None:
    received: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(503)

    async def send() -> None:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
        sender = AsyncHttpSender(SINK, client=client)
        try:
            await sender.send(EVENT)
        finally:
            await sender.aclose()

    with pytest.raises(TransientError):
        asyncio.run(send())
    assert received[0].headers["ce-id"] == "id-1"


def test_an_emitter_gives_the_same_id_for_the_same_cause() -> None:
    sender = RecordingSender()
    emitter = Emitter("pod_monitor", sender)

    first = emitter.emit(CANCELLED, cause="pod/uid-1/cancelled")
    second = emitter.emit(CANCELLED, cause="pod/uid-1/cancelled")

    expected = derive_event_id("pod/uid-1/cancelled", CANCELLED.TYPE, subject="ex-1")
    assert first.id == second.id == expected
    assert first.source == "/execmesh/pod_monitor"
    assert len(sender.sent) == 2


def test_an_emitter_without_a_cause_gives_fresh_ids() -> None:
    emitter = Emitter("api", RecordingSender())

    assert emitter.emit(CANCELLED).id != emitter.emit(CANCELLED).id


def test_an_emitter_applies_overrides_to_what_it_publishes() -> None:
    sender = RecordingSender()
    emitter = Emitter("pod_monitor", sender, {"source2": "containersource"})

    emitter.publish(EVENT)

    assert sender.sent[0].extensions == {"partitionkey": "ex-1", "source2": "containersource"}


def test_an_emitter_from_settings_posts_to_k_sink_with_k_ce_overrides() -> None:
    settings = Settings(k_sink=SINK, k_ce_overrides='{"extensions": {"via": "binding"}}')

    emitter = Emitter.from_settings("pod_monitor", settings)

    assert isinstance(emitter.sender, HttpSender)
    assert emitter.sender.sink_url == SINK
    assert emitter.overrides == {"via": "binding"}


def test_the_recording_sender_filters_by_type() -> None:
    sender = RecordingSender()
    sender.send(EVENT)

    assert sender.of_type(CANCELLED.TYPE) == [EVENT]
    assert sender.of_type("io.execmesh.other.thing") == []
