from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from execmesh.broker.ingress import MAX_EVENT_BYTES, build_app
from execmesh.broker.kafka_binding import KafkaRecord
from execmesh.errors import PermanentError, TransientError

PATH = "/execmesh/default"
TOPIC = "knative-broker-execmesh-default"
HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "e-1",
    "ce-source": "/test",
    "ce-type": "io.execmesh.test",
    "content-type": "application/json",
}


class ListLog:
    def __init__(self, fail_with: Exception | None = None) -> None:
        self.records: list[tuple[str, KafkaRecord]] = []
        self.fail_with = fail_with

    async def append(self, topic: str, record: KafkaRecord) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.records.append((topic, record))


class Client:
    """Calls the ASGI app in process, one event loop per request."""

    def __init__(self, event_log: ListLog) -> None:
        self.app = build_app({PATH: TOPIC}, event_log)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as http:
                return await http.request(method, path, **kwargs)

        return asyncio.run(call())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def client(event_log: ListLog) -> Client:
    return Client(event_log)


def test_a_valid_binary_event_is_stored_and_answered_202_with_no_body() -> None:
    log = ListLog()
    response = client(log).post(PATH, headers=HEADERS, content=b'{"x": 1}')
    assert (response.status_code, response.content) == (202, b"")
    [(topic, record)] = log.records
    assert topic == TOPIC
    assert record.value == b'{"x": 1}'


def test_a_valid_structured_event_is_stored() -> None:
    log = ListLog()
    body = json.dumps(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": {"a": 1}}
    )
    response = client(log).post(
        PATH, headers={"content-type": "application/cloudevents+json"}, content=body
    )
    assert response.status_code == 202
    assert len(log.records) == 1


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({k: v for k, v in HEADERS.items() if k != "ce-id"}, b"{}"),
        ({k: v for k, v in HEADERS.items() if k != "ce-source"}, b"{}"),
        ({k: v for k, v in HEADERS.items() if k != "ce-type"}, b"{}"),
        ({k: v for k, v in HEADERS.items() if k != "ce-specversion"}, b"{}"),
        ({**HEADERS, "ce-specversion": "0.3"}, b"{}"),
        ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "id"'),
        ({"content-type": "application/cloudevents+json"}, b"[" * 100_000),
        # Not CloudEvents Strings, and no HTTP client would deliver them on as headers.
        ({**HEADERS, "ce-subject": "a%0D%0Ax: 1"}, b"{}"),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t",'
            b' "datacontenttype": "application/json\\r\\nx: 1"}',
        ),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": "\\ud800"}',
        ),
        ({"content-type": "application/xml"}, b"<event/>"),
    ],
)
def test_anything_that_is_not_a_valid_cloudevent_is_400_and_not_stored(
    headers: dict[str, str], body: bytes
) -> None:
    log = ListLog()
    response = client(log).post(PATH, headers=headers, content=body)
    assert response.status_code == 400
    assert log.records == []


def test_an_unknown_broker_path_is_404() -> None:
    log = ListLog()
    assert client(log).post("/execmesh/other", headers=HEADERS).status_code == 404
    assert client(log).post("/a/b/c", headers=HEADERS).status_code == 404
    assert log.records == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(method: str) -> None:
    assert client(ListLog()).request(method, PATH).status_code == 405


def test_an_event_over_one_mebibyte_is_refused_and_the_next_one_accepted() -> None:
    log = ListLog()
    app = client(log)
    response = app.post(PATH, headers=HEADERS, content=b"x" * (MAX_EVENT_BYTES + 1))
    assert response.status_code == 413
    assert app.post(PATH, headers=HEADERS, content=b"{}").status_code == 202
    assert len(log.records) == 1


def test_kafka_not_taking_the_event_is_503() -> None:
    response = client(ListLog(TransientError("timed out"))).post(PATH, headers=HEADERS)
    assert response.status_code == 503


def test_kafka_refusing_the_size_is_413() -> None:
    response = client(ListLog(PermanentError("too large"))).post(PATH, headers=HEADERS)
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/healthz", "/health/liveness", "/health/readiness"])
def test_health_endpoints_answer_200(path: str) -> None:
    assert client(ListLog()).request("GET", path).status_code == 200
