"""Every endpoint of the API on the real MongoDB and Redis; the broker is a recording fake."""

from __future__ import annotations

import time

import pytest

from api.outbox import requested_event
from execmesh.events import ExecutionCancelRequested, ExecutionRequested
from tests.integration.api.conftest import Api

pytestmark = pytest.mark.services

HELLO = {"language": "python", "script": "print('hi')"}
SUBMIT = "/api/v1/executions"
PROBLEM = "application/problem+json"


def test_a_submission_is_recorded_published_and_readable_as_requested(api: Api) -> None:
    key = api.key("alice")
    answer = api.client.post(SUBMIT, json=HELLO, headers=api.auth(key))
    assert answer.status_code == 202, answer.text
    execution_id = answer.json()["id"]
    assert answer.headers["location"] == f"{SUBMIT}/{execution_id}"
    [event] = api.broker.of_type(ExecutionRequested.TYPE)
    assert (event.subject, event.data["user_id"]) == (execution_id, "alice")
    assert event.data["spec"]["language"] == "python" and event.data["spec"]["version"] != "latest"
    view = api.client.get(f"{SUBMIT}/{execution_id}", headers=api.auth(key)).json()
    assert (view["status"], view["user_id"], view["language"]) == ("requested", "alice", "python")


def test_no_key_or_a_wrong_key_is_401_with_a_bearer_challenge(api: Api) -> None:
    missing = api.client.post(SUBMIT, json=HELLO)
    wrong = api.client.get(SUBMIT, headers={"Authorization": "Bearer em_nope"})
    basic = api.client.get(SUBMIT, headers={"Authorization": "Basic eDp5"})
    for answer in (missing, wrong, basic):
        assert answer.status_code == 401
        assert answer.headers["content-type"] == PROBLEM
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["status"] == 401 and answer.json()["detail"]


def test_a_user_key_is_403_on_admin_endpoints_and_an_admin_key_is_not(api: Api) -> None:
    user = api.client.get("/api/v1/admin/queue", headers=api.auth(api.key("alice")))
    admin = api.client.get("/api/v1/admin/queue", headers=api.auth(api.key("root", admin=True)))
    assert user.status_code == 403 and user.headers["content-type"] == PROBLEM
    assert admin.status_code == 200 and set(admin.json()) >= {"running", "queued"}


def test_another_users_execution_is_404_to_read_cancel_and_follow(api: Api) -> None:
    alice, bob = api.key("alice"), api.key("bob")
    execution_id = api.client.post(SUBMIT, json=HELLO, headers=api.auth(alice)).json()["id"]
    url = f"{SUBMIT}/{execution_id}"
    assert api.client.get(url, headers=api.auth(bob)).status_code == 404
    assert api.client.post(f"{url}/cancel", headers=api.auth(bob)).status_code == 404
    assert api.client.get(f"{url}/events", headers=api.auth(bob)).status_code == 404
    assert api.client.get(url, headers=api.auth(api.key("root", admin=True))).status_code == 200
    assert api.client.get(f"{SUBMIT}/nosuchid", headers=api.auth(alice)).status_code == 404


def test_the_same_idempotency_key_and_body_give_the_same_execution(api: Api) -> None:
    headers = {**api.auth(api.key("alice")), "Idempotency-Key": "order-1"}
    first = api.client.post(SUBMIT, json=HELLO, headers=headers)
    second = api.client.post(SUBMIT, json=HELLO, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(api.broker.of_type(ExecutionRequested.TYPE)) == 1


def test_the_same_idempotency_key_with_another_body_is_422(api: Api) -> None:
    headers = {**api.auth(api.key("alice")), "Idempotency-Key": "order-2"}
    api.client.post(SUBMIT, json=HELLO, headers=headers)
    other = api.client.post(SUBMIT, json={**HELLO, "script": "print(2)"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


def test_idempotency_keys_of_two_users_never_meet(api: Api) -> None:
    key = {"Idempotency-Key": "same"}
    a = api.client.post(SUBMIT, json=HELLO, headers={**api.auth(api.key("alice")), **key})
    b = api.client.post(SUBMIT, json=HELLO, headers={**api.auth(api.key("bob")), **key})
    assert a.json()["id"] != b.json()["id"]


def test_a_burst_over_the_rate_is_429_with_retry_after_and_ratelimit_headers(api: Api) -> None:
    headers = api.auth(api.key("carol"))
    answers = [api.client.get(SUBMIT, headers=headers) for _ in range(12)]
    codes = [a.status_code for a in answers]
    assert codes[:5] == [200] * 5 and 429 in codes, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["content-type"] == PROBLEM
    assert answers[0].headers["ratelimit-remaining"] == "4"


def test_more_executions_in_flight_than_the_quota_is_429_until_one_ends(api: Api) -> None:
    headers = api.auth(api.key("dave"))
    ids = []
    for _ in range(3):
        ids.append(api.client.post(SUBMIT, json=HELLO, headers=headers).json()["id"])
    time.sleep(1.1)  # the rate limit is 5 per second: keep it out of this test
    over = api.client.post(SUBMIT, json=HELLO, headers=headers)
    assert over.status_code == 429 and over.json()["code"] == "quota_exceeded"
    _deliver(api, "io.execmesh.execution.completed", ids[0], {"exit_code": 0})
    assert api.client.post(SUBMIT, json=HELLO, headers=headers).status_code == 202


def test_a_body_over_the_size_limit_is_413(api: Api) -> None:
    body = {**HELLO, "script": "#" * (70 * 1024)}
    answer = api.client.post(SUBMIT, json=body, headers=api.auth(api.key("alice")))
    assert answer.status_code == 413 and answer.headers["content-type"] == PROBLEM


def test_malformed_json_is_400_and_a_wrong_shape_is_422_naming_the_field(api: Api) -> None:
    headers = {**api.auth(api.key("alice")), "content-type": "application/json"}
    bad = api.client.post(SUBMIT, content=b"{not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["code"] == "malformed_json"
    shape = api.client.post(SUBMIT, json={"language": "python"}, headers=headers)
    assert shape.status_code == 422 and shape.json()["errors"][0]["field"] == "script"


def test_an_unknown_language_is_422_listing_what_is_available(api: Api) -> None:
    body = {**HELLO, "language": "cobol"}
    answer = api.client.post(SUBMIT, json=body, headers=api.auth(api.key("alice")))
    assert answer.status_code == 422 and answer.json()["code"] == "unknown_runtime"
    assert "python" in answer.json()["detail"]


def test_limits_above_the_caps_are_422_naming_the_cap(api: Api) -> None:
    body = {**HELLO, "limits": {"memory_mb": 999999 // 100}}
    answer = api.client.post(SUBMIT, json=body, headers=api.auth(api.key("alice")))
    assert answer.status_code == 422 and answer.json()["code"] == "memory_too_large"
    assert "at most" in answer.json()["detail"]
    assert api.broker.sent == []


def test_the_list_shows_only_the_callers_own_newest_first_page_by_page(api: Api) -> None:
    alice = api.auth(api.key("alice"))
    mine = [api.client.post(SUBMIT, json=HELLO, headers=alice).json()["id"] for _ in range(3)]
    api.client.post(SUBMIT, json=HELLO, headers=api.auth(api.key("bob")))
    first = api.client.get(SUBMIT, params={"limit": 2}, headers=alice).json()
    second = api.client.get(
        SUBMIT, params={"limit": 2, "cursor": first["next_cursor"]}, headers=alice
    ).json()
    seen = [item["id"] for item in first["items"] + second["items"]]
    assert seen == list(reversed(mine)) and second["next_cursor"] is None


def test_the_list_filters_by_status_and_language(api: Api) -> None:
    alice = api.auth(api.key("alice"))
    done, waiting = (
        api.client.post(SUBMIT, json=HELLO, headers=alice).json()["id"] for _ in range(2)
    )
    _deliver(api, "io.execmesh.execution.completed", done, {"exit_code": 0})
    completed = api.client.get(SUBMIT, params={"status": "completed"}, headers=alice).json()
    assert [item["id"] for item in completed["items"]] == [done]
    ruby = api.client.get(SUBMIT, params={"language": "ruby"}, headers=alice).json()
    assert ruby["items"] == [] and waiting
    bad = api.client.get(SUBMIT, params={"status": "sleeping"}, headers=alice)
    assert bad.status_code == 400


def test_a_foreign_cursor_is_400(api: Api) -> None:
    answer = api.client.get(
        SUBMIT, params={"cursor": "garbage"}, headers=api.auth(api.key("alice"))
    )
    assert answer.status_code == 400 and answer.json()["code"] == "bad_cursor"


def test_cancel_publishes_a_cancel_request(api: Api) -> None:
    alice = api.auth(api.key("alice"))
    execution_id = api.client.post(SUBMIT, json=HELLO, headers=alice).json()["id"]
    answer = api.client.post(f"{SUBMIT}/{execution_id}/cancel", headers=alice)
    assert answer.status_code == 202
    [cancel] = api.broker.of_type(ExecutionCancelRequested.TYPE)
    assert cancel.data["execution_id"] == execution_id and cancel.data["requested_by"] == "alice"


def test_a_batch_answers_per_item(api: Api) -> None:
    body = {"executions": [HELLO, {**HELLO, "language": "cobol"}, HELLO]}
    answer = api.client.post(f"{SUBMIT}/batch", json=body, headers=api.auth(api.key("erin")))
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [item["status"] for item in items] == [202, 422, 202]
    assert items[1]["problem"]["code"] == "unknown_runtime"
    too_many = {"executions": [HELLO] * 21}
    over = api.client.post(f"{SUBMIT}/batch", json=too_many, headers=api.auth(api.key("erin")))
    assert over.status_code == 422


def test_runtimes_list_languages_and_limits(api: Api) -> None:
    body = api.client.get("/api/v1/runtimes", headers=api.auth(api.key("alice"))).json()
    assert "python" in {runtime["language"] for runtime in body["runtimes"]}
    assert body["max_limits"]["memory_mb"] >= body["default_limits"]["memory_mb"]


def test_health_and_openapi_need_no_key(api: Api) -> None:
    assert api.client.get("/health/liveness").status_code == 200
    assert api.client.get("/health/readiness").json()["checks"] == {
        "mongodb": "ok",
        "redis": "ok",
    }
    assert api.client.get("/api/v1/openapi.json").json()["openapi"].startswith("3.1")


def test_unknown_paths_and_methods_are_problems(api: Api) -> None:
    missing = api.client.get("/api/v1/nothing")
    method = api.client.delete(SUBMIT)
    assert (missing.status_code, method.status_code) == (404, 405)
    assert missing.headers["content-type"] == method.headers["content-type"] == PROBLEM


def test_with_the_broker_down_a_submission_is_202_and_the_outbox_publishes_it_later(
    api: Api,
) -> None:
    api.broker.down = True
    answer = api.client.post(SUBMIT, json=HELLO, headers=api.auth(api.key("alice")))
    assert answer.status_code == 202
    assert api.broker.sent == []
    api.broker.down = False
    api.gateway.outbox.grace = api.gateway.outbox.grace * 0
    published = api.client.portal.call(api.gateway.outbox.drain)  # type: ignore[union-attr]
    assert published == 1
    [event] = api.broker.sent
    assert event.subject == answer.json()["id"]
    record = api.gateway.records.get(answer.json()["id"])
    assert record is not None and record.published
    assert event.id == requested_event(record).id  # a republish is a duplicate, not a new run


def test_with_mongodb_unreachable_a_submission_is_503_never_202(api: Api) -> None:
    from pymongo import MongoClient

    dead: MongoClient[dict[str, object]] = MongoClient(
        "mongodb://127.0.0.1:9/", serverSelectionTimeoutMS=200
    )
    api.gateway.records.records = dead["x"]["api_requests"]  # type: ignore[assignment]
    answer = api.client.post(SUBMIT, json=HELLO, headers=api.auth(api.key("alice")))
    assert answer.status_code == 503 and answer.headers["content-type"] == PROBLEM
    assert "127.0.0.1" not in answer.text and ":9" not in answer.text  # no internal address
    assert api.broker.sent == []


def _deliver(api: Api, ce_type: str, execution_id: str, data: dict[str, object]) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"{ce_type}-{execution_id}",
        "ce-source": "/execmesh/test",
        "ce-type": ce_type,
        "ce-subject": execution_id,
        "content-type": "application/json",
    }
    answer = api.client.post("/", json={"execution_id": execution_id, **data}, headers=headers)
    assert answer.status_code == 202, answer.text
