"""Callback webhooks: signed, sent once per execution, retried until the receiver takes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from api.callbacks import SIGNATURE_HEADER, verify
from execmesh.events import TerminalStatus
from execmesh.results import ExecutionDocument, ExecutionResult, ExecutionStatus
from tests.integration.api.conftest import Api
from tests.integration.api.test_api_sse import deliver
from tests.support.http_sink import serving_posts

pytestmark = pytest.mark.services


@dataclass
class Receiver:
    """A callback receiver that answers 503 ``failures_left`` times, then takes the calls."""

    failures_left: int = 0
    received: list[tuple[bytes, str]] = field(default_factory=list)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        if self.failures_left > 0:
            self.failures_left -= 1
            return 503
        self.received.append((body, headers.get(SIGNATURE_HEADER.lower(), "")))
        return 204


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    taker = Receiver()
    with serving_posts(taker.answer, "/hook") as url:
        yield taker, url


def finished(api: Api, execution_id: str) -> None:
    result = ExecutionResult(
        status=TerminalStatus.COMPLETED,
        event_id="e",
        event_source="/execmesh/test",
        event_type="io.execmesh.execution.completed",
        exit_code=0,
    )
    api.gateway.executions.save(
        ExecutionDocument(
            execution_id=execution_id,
            status=ExecutionStatus.COMPLETED,
            updated_at=datetime.now(UTC),
            user_id="alice",
            result=result,
        )
    )


def test_the_end_of_an_execution_is_called_back_once_signed_after_retries(
    api: Api, receiver: tuple[Receiver, str]
) -> None:
    api.gateway.callbacks.first_backoff = 0.05
    taker, url = receiver
    taker.failures_left = 2
    body = {"language": "python", "script": "print(1)", "callback_url": url}
    answer = api.client.post("/api/v1/executions", json=body, headers=api.auth(api.key("alice")))
    execution_id = answer.json()["id"]
    finished(api, execution_id)
    for _ in range(2):  # a redelivery of the terminal event calls back no second time
        deliver(api, "io.execmesh.execution.completed", execution_id, {"exit_code": 0})
    deadline = time.monotonic() + 10
    while not taker.received and time.monotonic() < deadline:
        time.sleep(0.05)
    [(content, signed)] = taker.received
    assert b'"status":"completed"' in content and execution_id.encode() in content
    assert verify("s3cret", content, signed, now=int(time.time()))
    assert not verify("other", content, signed, now=int(time.time()))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1:8080/hook", "10.0.0.1 is a private address"),
        ("http://[::ffff:192.168.0.1]/hook", "(IPv4 192.168.0.1) is a private address"),
        ("https://user:pw@93.184.215.14/hook", "must not carry a user name or password"),
        ("http://nowhere.invalid/hook", "the host nowhere.invalid does not resolve"),
    ],
)
def test_a_callback_the_platform_may_not_call_is_refused_with_the_reason(
    api: Api, url: str, reason: str
) -> None:
    body = {"language": "python", "script": "print(1)", "callback_url": url}
    answer = api.client.post("/api/v1/executions", json=body, headers=api.auth(api.key("alice")))
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "callback_not_allowed"
    assert reason in problem["detail"]
    assert problem["errors"][0]["field"] == "callback_url"
    assert api.database["api_requests"].count_documents({}) == 0
    assert api.broker.sent == []
