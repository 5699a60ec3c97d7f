"""Live events: delivered by the Trigger to ``POST /``, read back as Server-Sent Events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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
