"""The API's pure pieces: submissions against the caps, views, cursors, headers, problems."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from api import openapi, problems
from api.bodylimit import BodySizeLimit
from api.models import ExecutionRequest
from api.problems import Problem
from api.ratelimit import rate_decision
from api.records import RequestRecord, body_hash, decode_cursor, encode_cursor, execution_id_for
from api.submission import build_request, parse_body, parse_json
from api.views import execution_view, output_view
from execmesh.admission.limits import ServerLimits
from execmesh.client.http import parse_sse
from execmesh.client.keys import hash_key, new_key
from execmesh.events import StreamOutput
from execmesh.pods.runtimes import RuntimeRegistry, cluster_runtimes

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
REGISTRY = RuntimeRegistry({"cluster": cluster_runtimes(), "local": ()})


def resolve(language: str, version: str) -> object:
    return REGISTRY.resolve(language, version, "cluster")


def build(**fields: object) -> object:
    body = ExecutionRequest.model_validate({"language": "python", "script": "1", **fields})
    return build_request(
        body,
        execution_id="e1",
        user_id="alice",
        now=NOW,
        server=ServerLimits(),
        resolve=resolve,  # type: ignore[arg-type]
    )


def test_the_checked_in_openapi_document_is_current() -> None:
    assert openapi.main(["--check"]) == 0, "run `python -m api.openapi`"


def test_a_request_gets_the_canonical_language_and_newest_version() -> None:
    request = build(language="py")
    assert request.spec.language == "python"  # type: ignore[attr-defined]
    assert request.spec.version[0].isdigit()  # type: ignore[attr-defined]
    assert request.limits is None  # type: ignore[attr-defined]


def test_partial_limits_are_completed_with_the_defaults() -> None:
    request = build(limits={"timeout_seconds": 5})
    limits = request.limits  # type: ignore[attr-defined]
    assert limits.timeout_seconds == 5 and limits.memory_mb == ServerLimits().default.memory_mb


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"language": "cobol"}, "unknown_runtime"),
        ({"limits": {"memory_mb": 4096}}, "memory_too_large"),
        ({"limits": {"timeout_seconds": 3000}}, "timeout_too_large"),
        ({"limits": {"cpu_millis": 5}}, "cpu_too_small"),
    ],
)
def test_what_the_coordinator_would_reject_is_a_422_naming_the_cap(
    fields: dict[str, object], code: str
) -> None:
    with pytest.raises(Problem) as refused:
        build(**fields)
    assert (refused.value.status, refused.value.code) == (422, code)


def test_malformed_json_is_a_400_and_an_unknown_field_a_422() -> None:
    with pytest.raises(Problem) as malformed:
        parse_json(b"{")
    with pytest.raises(Problem) as too_deep:
        parse_json(b"[" * 100_000)
    assert too_deep.value.status == 400
    with pytest.raises(Problem) as unknown:
        parse_body({"language": "python", "script": "", "colour": "red"})
    assert malformed.value.status == 400 and unknown.value.status == 422
    assert unknown.value.extensions["errors"][0]["field"] == "colour"


def test_an_idempotency_key_always_gives_the_same_id_per_user() -> None:
    assert execution_id_for("alice", "k") == execution_id_for("alice", "k")
    assert execution_id_for("alice", "k") != execution_id_for("bob", "k")
    assert execution_id_for("alice", None) != execution_id_for("alice", None)


def test_the_body_hash_ignores_key_order() -> None:
    assert body_hash({"a": 1, "b": [2]}) == body_hash({"b": [2], "a": 1})


def test_a_cursor_round_trips_and_garbage_is_refused() -> None:
    record = RequestRecord(build(), "h", NOW)  # type: ignore[arg-type]
    assert decode_cursor(encode_cursor(record)) == (NOW, "e1")
    with pytest.raises(ValueError):
        decode_cursor("garbage")


def test_rate_headers_count_down_and_a_refusal_says_when_to_retry() -> None:
    first = rate_decision(1, 1000, 3)
    over = rate_decision(4, 300, 3)
    assert first.allowed and first.headers()["RateLimit-Remaining"] == "2"
    assert "Retry-After" not in first.headers()
    assert not over.allowed and over.headers()["Retry-After"] == "1"
    assert over.headers()["RateLimit-Remaining"] == "0"


def test_a_stored_output_is_shown_by_link_only() -> None:
    stored = output_view("e1", "stdout", StreamOutput(size=10**6, ref="e1/stdout"))
    inline = output_view("e1", "stdout", StreamOutput(data="hi\n", size=3))
    assert stored is not None and stored.data is None and stored.url
    assert inline is not None and inline.data == "hi\n"


def test_an_execution_the_pipeline_has_not_seen_is_requested() -> None:
    record = RequestRecord(build(), "h", NOW)  # type: ignore[arg-type]
    view = execution_view("e1", record, None)
    assert (view.status, view.user_id, view.result) == ("requested", "alice", None)


def test_an_api_key_is_stored_only_as_its_hash() -> None:
    key = new_key()
    assert key.startswith("em_") and len(key) > 40
    assert hash_key(key) != key and len(hash_key(key)) == 64


def test_sse_lines_parse_into_events_and_comments_are_skipped() -> None:
    lines = [": keep-alive", "", "id: 1-0", "event: queued", 'data: {"a":1}', ""]
    [event] = parse_sse(iter(lines))
    assert (event.id, event.event, event.data) == ("1-0", "queued", {"a": 1})


async def echo(request: Request) -> Response:
    return PlainTextResponse(str(len(await request.body())))


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed() -> None:
    inner = Starlette(
        routes=[Route("/", echo, methods=["POST"])],
        exception_handlers={Problem: problems.on_problem},
    )
    app = BodySizeLimit(inner, max_bytes=10)
    client = TestClient(app)
    assert client.post("/", content=b"x" * 10).text == "10"
    declared = client.post("/", content=b"x" * 11)
    streamed = client.post("/", content=iter([b"x" * 6, b"x" * 6]))
    assert declared.status_code == streamed.status_code == 413
    assert declared.headers["content-type"] == "application/problem+json"
