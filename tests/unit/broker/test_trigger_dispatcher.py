from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping

import pytest

from execmesh.broker.cloudevent import Event
from execmesh.broker.delivery import Delivery
from execmesh.broker.dispatcher import (
    Response,
    Route,
    SendFailed,
    TriggerDispatcher,
    judge,
)
from execmesh.broker.filters import MATCH_ALL, Exact
from execmesh.broker.kafka_binding import KafkaRecord, from_record

SUBSCRIBER = "http://127.0.0.1:1/sub"
DLS = "http://127.0.0.1:1/dlq"
REPLY_HEADERS = {"ce-specversion": "1.0", "ce-id": "r-1", "ce-source": "/s", "ce-type": "reply"}


def event(n: int = 1, **extra: str) -> Event:
    return Event({"specversion": "1.0", "id": f"e-{n}", "source": "/t", "type": "t", **extra})


class ScriptedSender:
    """Answers each POST to a URL with the next scripted response (or failure)."""

    def __init__(self, script: Mapping[str, list[Response | Exception]]) -> None:
        self.script = {url: list(answers) for url, answers in script.items()}
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> Response:
        self.calls.append((url, dict(headers), body))
        answers = self.script[url]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class ListLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, KafkaRecord]] = []

    async def append(self, topic: str, record: KafkaRecord) -> None:
        self.records.append((topic, record))


class Harness:
    def __init__(self, sender: ScriptedSender, delivery: Delivery, filter_: object = MATCH_ALL):
        self.sleeps: list[float] = []
        self.finished: list[tuple[int, int]] = []
        self.log = ListLog()

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        route = Route("t", filter_, SUBSCRIBER, delivery, DLS, "topic")  # type: ignore[arg-type]
        self.dispatcher = TriggerDispatcher(
            route, sender, self.log, lambda p, o: self.finished.append((p, o)), sleep
        )

    async def run(self, *events: Event, key: bytes | None = None) -> None:
        for offset, e in enumerate(events):
            self.dispatcher.submit(0, offset, key, e)
        await self.dispatcher.drain(5)


def ok(status: int = 202, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, headers or {}, body)


def test_a_5xx_is_retried_with_exponential_backoff_then_dead_lettered() -> None:
    sender = ScriptedSender({SUBSCRIBER: [ok(503, b"busy")], DLS: [ok(202)]})
    harness = Harness(sender, Delivery(retry=3, backoff_delay=0.1))
    asyncio.run(harness.run(event()))
    assert harness.sleeps == pytest.approx([0.2, 0.4, 0.8])
    assert [c[0] for c in sender.calls] == [SUBSCRIBER] * 4 + [DLS]
    letter = sender.calls[-1][1]
    assert letter["ce-knativeerrordest"] == SUBSCRIBER
    assert letter["ce-knativeerrorcode"] == "503"
    assert base64.b64decode(letter["ce-knativeerrordata"]) == b"busy"
    assert harness.finished == [(0, 0)]


def test_a_non_retriable_4xx_is_dead_lettered_at_once() -> None:
    sender = ScriptedSender({SUBSCRIBER: [ok(400, b"bad" * 1000)], DLS: [ok(202)]})
    harness = Harness(sender, Delivery(retry=5, backoff_delay=0.1))
    asyncio.run(harness.run(event()))
    assert harness.sleeps == []
    assert len(base64.b64decode(sender.calls[-1][1]["ce-knativeerrordata"])) == 1024


def test_connection_errors_are_retried_until_the_subscriber_answers() -> None:
    sender = ScriptedSender({SUBSCRIBER: [SendFailed("refused"), SendFailed("refused"), ok()]})
    harness = Harness(sender, Delivery(retry=5, backoff_policy="linear", backoff_delay=0.1))
    asyncio.run(harness.run(event()))
    assert harness.sleeps == pytest.approx([0.1, 0.2])
    assert [c[0] for c in sender.calls] == [SUBSCRIBER] * 3


def test_a_2xx_with_a_cloudevent_is_a_reply_stored_in_the_broker() -> None:
    reply = ok(200, b'{"r": 1}', {**REPLY_HEADERS, "content-type": "application/json"})
    harness = Harness(ScriptedSender({SUBSCRIBER: [reply]}), Delivery())
    asyncio.run(harness.run(event()))
    [(topic, record)] = harness.log.records
    assert topic == "topic"
    assert from_record(record.value, record.headers).attributes["type"] == "reply"


def test_a_request_the_client_refuses_to_send_is_dead_lettered_not_dropped() -> None:
    refused = ValueError("Newline or carriage return character detected in HTTP status")
    sender = ScriptedSender({SUBSCRIBER: [refused], DLS: [ok(202)]})
    harness = Harness(sender, Delivery(retry=3))
    asyncio.run(harness.run(event()))
    assert harness.sleeps == []
    assert [c[0] for c in sender.calls] == [SUBSCRIBER, DLS]
    assert harness.finished == [(0, 0)]


def test_a_reply_that_is_no_valid_cloudevent_dead_letters_the_event() -> None:
    headers = {**REPLY_HEADERS, "ce-subject": "a%0D%0Ab", "content-type": "application/json"}
    sender = ScriptedSender({SUBSCRIBER: [ok(200, b"{}", headers)], DLS: [ok(202)]})
    harness = Harness(sender, Delivery(retry=3))
    asyncio.run(harness.run(event()))
    assert harness.log.records == []
    assert [c[0] for c in sender.calls] == [SUBSCRIBER, DLS]


def test_a_2xx_with_a_body_that_is_not_an_event_is_a_failure_without_retry() -> None:
    sender = ScriptedSender({SUBSCRIBER: [ok(200, b"OK")], DLS: [ok(202)]})
    harness = Harness(sender, Delivery(retry=3))
    asyncio.run(harness.run(event()))
    assert harness.sleeps == []
    assert sender.calls[-1][1]["ce-knativeerrorcode"] == "200"


def test_a_filtered_out_event_is_finished_without_delivery() -> None:
    sender = ScriptedSender({SUBSCRIBER: [ok()]})
    harness = Harness(sender, Delivery(), Exact("type", "other"))
    asyncio.run(harness.run(event(1), event(2)))
    assert sender.calls == []
    assert sorted(harness.finished) == [(0, 0), (0, 1)]


def test_events_of_one_partition_key_are_delivered_in_order() -> None:
    sender = ScriptedSender({SUBSCRIBER: [ok()]})
    harness = Harness(sender, Delivery())
    asyncio.run(harness.run(*(event(n) for n in range(20)), key=b"k"))
    assert [c[1]["ce-id"] for c in sender.calls] == [f"e-{n}" for n in range(20)]
    assert harness.finished == [(0, n) for n in range(20)]


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        (ok(202), "done"),
        (ok(200), "done"),
        (ok(200, b"OK"), "fail"),
        (ok(200, b"{}", {**REPLY_HEADERS}), "reply"),
        (ok(200, b"{}", {"ce-specversion": "1.0"}), "fail"),
        (ok(404), "retry"),
        (ok(429), "retry"),
        (ok(500), "retry"),
        (ok(422), "fail"),
        (ok(302), "fail"),
    ],
)
def test_each_answer_is_judged_as_the_kafka_broker_does(response: Response, verdict: str) -> None:
    assert judge(response).verdict == verdict
