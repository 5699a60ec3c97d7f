"""functions/coordinator/main.py served by the real functions-framework CLI, on the real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from coordinator_harness import MAIN, requested

from execmesh.events import ExecutionCompleted, Payload
from execmesh.settings import Settings
from tests.support.cloudevents import binary_headers
from tests.support.functions import serving_function
from tests.support.http_sink import serving_posts
from tests.support.ports import free_port
from tests.support.redis_keys import delete_keys, redis_client

pytestmark = pytest.mark.services

# A database of its own: the served function uses the default key prefix.
REDIS_DB = 13


def redis_url() -> str:
    base = Settings.from_env().redis_url.rsplit("/", 1)[0]
    return f"{base}/{REDIS_DB}"


@pytest.fixture
def sink() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    def record(headers: dict[str, str], body: bytes) -> int:
        received.append({**headers, "body": body.decode()})
        return 202

    with serving_posts(record) as url:
        yield url, received


@pytest.fixture
def coordinator_url(sink: tuple[str, list[dict[str, str]]], tmp_path: Path) -> Iterator[str]:
    env = {
        "K_SINK": sink[0],
        "REDIS_URL": redis_url(),
        "EXECMESH_POD_BACKEND": "cluster",
        "EXECMESH_MAX_GLOBAL": "1",
    }
    log = tmp_path / "coordinator.log"
    with redis_client("execmesh", redis_url()) as client:
        delete_keys(client, "execmesh:*")  # what an interrupted run left
        with serving_function("coordinator", MAIN, free_port(), env, log) as url:
            yield url


def post(url: str, payload: Payload, event_id: str) -> int:
    headers = binary_headers(payload.TYPE, event_id, "/test")
    return httpx.post(url, headers=headers, content=json.dumps(payload.to_data())).status_code


def test_the_served_coordinator_admits_queues_and_admits_the_next_on_completion(
    coordinator_url: str, sink: tuple[str, list[dict[str, str]]]
) -> None:
    received = sink[1]
    run = uuid.uuid4().hex[:8]
    first, second = f"ex-{run}-1", f"ex-{run}-2"

    answers = [
        post(coordinator_url, requested(first), f"req-{run}-1"),
        post(coordinator_url, requested(second), f"req-{run}-2"),
        post(coordinator_url, ExecutionCompleted(execution_id=first, exit_code=0), f"c-{run}"),
    ]

    assert answers == [202, 202, 202]
    assert [(h["ce-type"].rsplit(".", 1)[1], h["ce-subject"]) for h in received] == [
        ("accepted", first),
        ("queued", second),
        ("accepted", second),
    ]
    assert {h["ce-source"] for h in received} == {"/execmesh/coordinator"}
