"""A function built on the contract, served by the real ``functions-framework`` CLI."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from execmesh.events import ExecutionCancelled, ExecutionCancelRequested
from execmesh.mesh import derive_event_id
from execmesh.settings import Settings
from tests.support.cloudevents import binary_headers

from .serving import Sink, running_function, running_sink

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def module_sink() -> Iterator[Sink]:
    with running_sink() as sink:
        yield sink


@pytest.fixture
def sink(module_sink: Sink) -> Sink:
    module_sink.status = 202
    module_sink.received.clear()
    return module_sink


def function_env(sink: Sink) -> dict[str, str]:
    return {
        "K_SINK": sink.url,
        "K_CE_OVERRIDES": json.dumps({"extensions": {"boundby": "sinkbinding"}}),
        "REDIS_URL": Settings.from_env().redis_url,
    }


@pytest.fixture(scope="module")
def function_url(tmp_path_factory: pytest.TempPathFactory, module_sink: Sink) -> Iterator[str]:
    # One server for the module: every test uses fresh event ids, and the sink is reset.
    workdir = tmp_path_factory.mktemp("echo")
    with running_function("echo", workdir, function_env(module_sink)) as url:
        yield url


def post_cancel_request(
    url: str, event_id: str, client: httpx.Client | None = None
) -> httpx.Response:
    payload = ExecutionCancelRequested(execution_id="ex-ff", reason="test")
    headers = binary_headers(
        payload.TYPE, event_id, "/execmesh/api", subject="ex-ff", partitionkey="ex-ff"
    )
    body = json.dumps(payload.to_data())
    if client is None:
        return httpx.post(url, headers=headers, content=body, timeout=10)
    return client.post(url, headers=headers, content=body)


def test_a_binary_event_is_answered_202_empty_and_its_emission_reaches_k_sink(
    function_url: str, sink: Sink
) -> None:
    event_id = f"evt-{uuid.uuid4()}"

    response = post_cancel_request(function_url, event_id)

    assert response.status_code == 202
    assert response.content == b""
    assert "content-type" not in response.headers
    ((headers, body),) = sink.received
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == ExecutionCancelled.TYPE
    assert headers["ce-source"] == "/execmesh/echo"
    assert headers["ce-id"] == derive_event_id(
        f"/execmesh/api\n{event_id}", ExecutionCancelled.TYPE, subject="ex-ff"
    )
    assert headers["ce-subject"] == "ex-ff"
    assert headers["ce-partitionkey"] == "ex-ff"
    assert headers["ce-boundby"] == "sinkbinding"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["reason"] == f"echo of {event_id}"


def test_a_redelivered_event_is_acknowledged_without_emitting_again(
    function_url: str, sink: Sink
) -> None:
    event_id = f"evt-{uuid.uuid4()}"

    answers = [post_cancel_request(function_url, event_id).status_code for _ in range(3)]

    assert answers == [202, 202, 202]
    assert len(sink.received) == 1


def test_a_sink_failure_is_a_503_and_the_retry_succeeds_once_the_sink_is_back(
    function_url: str, sink: Sink
) -> None:
    event_id = f"evt-{uuid.uuid4()}"
    sink.status = 503

    failed = post_cancel_request(function_url, event_id)
    sink.status = 202
    retried = post_cancel_request(function_url, event_id)

    assert failed.status_code == 503
    assert failed.headers["content-type"] == "application/problem+json"
    assert retried.status_code == 202
    first_attempt, second_attempt = (headers["ce-id"] for headers, _ in sink.received)
    assert first_attempt == second_attempt


def test_a_malformed_event_is_a_400_and_nothing_is_emitted(function_url: str, sink: Sink) -> None:
    response = httpx.post(
        function_url,
        headers={"content-type": "application/cloudevents+json"},
        content=b"{not a cloudevent",
        timeout=10,
    )

    assert response.status_code == 400
    assert sink.received == []


def test_the_health_endpoints_answer_200(function_url: str) -> None:
    assert httpx.get(f"{function_url}/health/liveness", timeout=5).status_code == 200
    assert httpx.get(f"{function_url}/health/readiness", timeout=5).status_code == 200


def test_the_function_is_served_as_asgi_by_uvicorn(function_url: str) -> None:
    # Not Flask on gunicorn's thread worker, which functions-framework picks for a WSGI view.
    response = httpx.get(f"{function_url}/health/liveness", timeout=5)
    assert response.headers["server"] == "uvicorn"


def test_a_stream_of_events_is_each_answered_202_and_emitted_once(
    function_url: str, sink: Sink
) -> None:
    count = 200
    latencies = []
    with httpx.Client(timeout=10) as client:
        for n in range(count):
            started = time.perf_counter()
            response = post_cancel_request(function_url, f"evt-{uuid.uuid4()}-{n}", client)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 202

    latencies.sort()
    p50, p99 = latencies[count // 2] * 1000, latencies[int(count * 0.99)] * 1000
    print(f"\nfunctions-framework, {count} events one by one: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert len(sink.received) == count
    assert len({headers["ce-id"] for headers, _ in sink.received}) == count


def test_an_alias_target_is_served_as_http_whatever_the_signature_type_default(
    tmp_path: Path, sink: Sink
) -> None:
    env = {**function_env(sink), "FUNCTION_SIGNATURE_TYPE": "cloudevent"}
    with running_function("served_as_handle", tmp_path, env) as url:
        response = post_cancel_request(url, f"evt-{uuid.uuid4()}")

    assert (response.status_code, response.content) == (202, b"")
    assert response.headers["server"] == "uvicorn"
    assert len(sink.received) == 1
