"""Live events: delivered by the Trigger to ``POST /``, read back as Server-Sent Events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest
import redis

from api import ratelimit
from execmesh.client.http import parse_sse
from execmesh.results import ExecutionDocument, ExecutionStatus
from tests.integration.api.conftest import Api

pytestmark = pytest.mark.services

LIFECYCLE = [
    ("io.execmesh.execution.queued", {"user_id": "alice", "priority": "normal", "position": 0}),
    ("io.execmesh.pod.running", {"pod_name": "p"}),
    ("io.execmesh.execution.completed", {"exit_code": 3}),
]


def deliver(api: Api, ce_type: str, execution_id: str, data: dict[str, object]) -> int:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"{ce_type}-{execution_id}",
        "ce-source": "/execmesh/test",
        "ce-type": ce_type,
        "ce-subject": execution_id,
        "content-type": "application/json",
    }
    body = {"execution_id": execution_id, **data}
    return api.client.post("/", json=body, headers=headers).status_code


def follow(api: Api, key: str, execution_id: str, last: str | None = None) -> list[tuple[str, str]]:
    headers = api.auth(key) | ({"Last-Event-ID": last} if last else {})
    url = f"/api/v1/executions/{execution_id}/events"
    with api.client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [(event.id, event.event) for event in parse_sse(response.iter_lines())]


def submitted(api: Api) -> tuple[str, str]:
    key = api.key("alice")
    body = {"language": "python", "script": "print(1)"}
    answer = api.client.post("/api/v1/executions", json=body, headers=api.auth(key))
    return key, answer.json()["id"]


def test_the_lifecycle_arrives_in_order_and_the_stream_closes_after_the_terminal_event(
    api: Api,
) -> None:
    key, execution_id = submitted(api)
    for ce_type, data in LIFECYCLE:
        assert deliver(api, ce_type, execution_id, data) == 202
    events = follow(api, key, execution_id)
    assert [name for _, name in events] == ["queued", "running", "completed"]


def test_a_redelivered_event_is_streamed_once(api: Api) -> None:
    key, execution_id = submitted(api)
    for ce_type, data in [*LIFECYCLE[:1], *LIFECYCLE]:
        deliver(api, ce_type, execution_id, data)
    assert [name for _, name in follow(api, key, execution_id)] == [
        "queued",
        "running",
        "completed",
    ]


def test_a_reconnect_with_last_event_id_resumes_right_after_it(api: Api) -> None:
    key, execution_id = submitted(api)
    for ce_type, data in LIFECYCLE:
        deliver(api, ce_type, execution_id, data)
    first, second, third = follow(api, key, execution_id)
    assert follow(api, key, execution_id, last=first[0]) == [second, third]
    assert follow(api, key, execution_id, last=second[0]) == [third]


def test_a_stream_whose_terminal_event_never_came_ends_when_the_document_is_final(
    api: Api,
) -> None:
    key, execution_id = submitted(api)
    document = ExecutionDocument(
        execution_id=execution_id,
        status=ExecutionStatus.CANCELLED,
        updated_at=datetime.now(UTC),
        user_id="alice",
    )
    api.gateway.executions.save(document)
    assert [name for _, name in follow(api, key, execution_id)] == ["cancelled"]


def test_a_bad_last_event_id_is_400(api: Api) -> None:
    key, execution_id = submitted(api)
    url = f"/api/v1/executions/{execution_id}/events"
    answer = api.client.get(url, headers=api.auth(key) | {"Last-Event-ID": "nope"})
    assert answer.status_code == 400


def test_an_event_that_is_not_a_cloudevent_is_400_and_an_unlisted_type_is_ignored(
    api: Api,
) -> None:
    assert api.client.post("/", json={"hello": 1}).status_code == 400
    assert deliver(api, "io.execmesh.result.stored", "x1", {"status": "completed"}) == 202


def open_streams(api: Api, user: str) -> dict[str, float]:
    """The user's stream leases, by stream id, with the time each was taken or renewed."""
    client = redis.Redis.from_url(api.gateway.settings.redis_url)
    leases = client.zrange(f"{ratelimit.PREFIX}:streams:{user}", 0, -1, withscores=True)
    return {member.decode(): score for member, score in leases}


def test_a_user_with_every_stream_open_gets_429_and_other_users_do_not(api: Api) -> None:
    key, execution_id = submitted(api)
    protection = api.gateway.protection
    for stream_id in ("elsewhere-1", "elsewhere-2"):  # open on any replica
        assert api.client.portal.call(protection.open_stream, "alice", stream_id)  # type: ignore[union-attr]
    url = f"/api/v1/executions/{execution_id}/events"
    answer = api.client.get(url, headers=api.auth(key))
    assert answer.status_code == 429
    assert answer.json()["code"] == "too_many_streams"
    assert answer.headers["Retry-After"] == "1"
    assert set(open_streams(api, "alice")) == {"elsewhere-1", "elsewhere-2"}

    bob = api.key("bob")
    body = {"language": "python", "script": "print(1)"}
    bobs = api.client.post("/api/v1/executions", json=body, headers=api.auth(bob)).json()["id"]
    for ce_type, data in LIFECYCLE:
        deliver(api, ce_type, bobs, {**data, "user_id": "bob"} if "user_id" in data else data)
    assert [name for _, name in follow(api, bob, bobs)] == ["queued", "running", "completed"]


def test_a_stream_that_ends_gives_its_lease_back(api: Api) -> None:
    key, execution_id = submitted(api)
    assert api.client.portal.call(api.gateway.protection.open_stream, "alice", "elsewhere")  # type: ignore[union-attr]
    for ce_type, data in LIFECYCLE:
        deliver(api, ce_type, execution_id, data)
    # One of the two is free: this stream takes it, ends after the terminal event, gives it back.
    for _ in range(3):
        assert len(follow(api, key, execution_id)) == 3
    assert set(open_streams(api, "alice")) == {"elsewhere"}


def test_the_lease_of_a_replica_that_died_lapses(api: Api) -> None:
    key, execution_id = submitted(api)
    lapsed = time.time() * 1000 - ratelimit.STREAM_LEASE_MS - 1
    client = redis.Redis.from_url(api.gateway.settings.redis_url)
    client.zadd(f"{ratelimit.PREFIX}:streams:alice", {"dead-1": lapsed, "dead-2": lapsed})
    for ce_type, data in LIFECYCLE:
        deliver(api, ce_type, execution_id, data)
    assert len(follow(api, key, execution_id)) == 3
    assert open_streams(api, "alice") == {}


def test_an_open_stream_renews_its_lease_and_gives_it_back_when_cancelled(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "STREAM_RENEW_SECONDS", 0.0)
    protection = api.gateway.protection
    renewals: list[float] = []
    cancelled_while_open = anyio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b": keep-alive\n\n"
            await anyio.sleep(0.01)
        cancelled_while_open.set()
        await anyio.sleep_forever()  # the client is still there, silently
        yield b""

    async def scenario() -> None:
        assert await protection.open_stream("carol", "s")
        async with anyio.create_task_group() as group:

            async def consume() -> None:
                async for _ in protection.while_open("carol", "s", chunks()):
                    renewals.append(open_streams(api, "carol")["s"])

            group.start_soon(consume)
            await cancelled_while_open.wait()
            assert set(open_streams(api, "carol")) == {"s"}
            group.cancel_scope.cancel()  # the client went away

    api.client.portal.call(scenario)  # type: ignore[union-attr]
    assert len(renewals) == 3 and renewals == sorted(renewals) and renewals[0] < renewals[-1]
    assert open_streams(api, "carol") == {}
