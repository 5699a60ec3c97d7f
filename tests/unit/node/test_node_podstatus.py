from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from execmesh.node import podstatus
from execmesh.node.podstatus import Outcome


def pod(**resources: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "python:3.11-slim", "resources": resources}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [container]},
    }
    body["status"] = podstatus.scheduled(body, "2026-01-01T00:00:00Z")
    return body


def as_client_model(body: dict[str, Any]) -> client.V1Pod:
    """Deserialise as the official client does with a real API server's answer."""

    return client.ApiClient().deserialize(json.dumps(body), "V1Pod", "application/json")


def test_an_accepted_pod_is_pending_with_its_container_being_created() -> None:
    status = pod()["status"]
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert status["startTime"] == "2026-01-01T00:00:00Z"


def test_a_running_pod_is_ready_with_its_start_time() -> None:
    body = pod()
    body["status"] = podstatus.running(body, "2026-01-01T00:00:01Z")
    model = as_client_model(body)
    assert model.status.phase == "Running"
    assert model.status.container_statuses[0].state.running.started_at.second == 1
    assert model.status.container_statuses[0].ready


def test_exit_zero_succeeds_with_completed_and_other_codes_fail_with_error() -> None:
    for code, phase, reason in ((0, "Succeeded", "Completed"), (3, "Failed", "Error")):
        body = pod()
        outcome = Outcome(code, "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", message="{}")
        body["status"] = podstatus.terminated(body, outcome)
        state = as_client_model(body).status.container_statuses[0].state.terminated
        assert (body["status"]["phase"], state.reason, state.exit_code) == (phase, reason, code)
        assert state.message == "{}"


def test_a_deadline_fails_the_pod_with_the_pod_level_reason() -> None:
    body = pod()
    outcome = Outcome(
        137, "t0", "t1", signal=9, pod_reason="DeadlineExceeded", pod_message="too long"
    )
    body["status"] = podstatus.terminated(body, outcome)
    assert (body["status"]["phase"], body["status"]["reason"]) == ("Failed", "DeadlineExceeded")
    terminated = body["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["signal"], terminated["reason"]) == (137, 9, "Error")


def test_an_oom_kill_is_the_container_reason() -> None:
    body = pod()
    body["status"] = podstatus.terminated(body, Outcome(137, "t0", "t1", reason="OOMKilled"))
    terminated = body["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (body["status"]["phase"], terminated["reason"]) == ("Failed", "OOMKilled")


def test_a_truncated_log_is_flagged_as_a_pod_condition() -> None:
    body = pod()
    body["status"] = podstatus.terminated(body, Outcome(0, "t0", "t1", log_truncated=True))
    flags = {c["type"]: c["status"] for c in body["status"]["conditions"]}
    assert flags["execmesh.io/LogTruncated"] == "True"
    assert flags["Ready"] == "False"


def test_waiting_keeps_the_phase_and_names_the_reason() -> None:
    body = pod()
    body["status"] = podstatus.waiting(body, "ErrImagePull", "no such image")
    assert body["status"]["phase"] == "Pending"
    waiting = body["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ErrImagePull", "message": "no such image"}


def test_qos_class_follows_requests_and_limits() -> None:
    assert pod()["status"]["qosClass"] == "BestEffort"
    same = {"cpu": "1", "memory": "1Gi"}
    assert pod(limits=same, requests=same)["status"]["qosClass"] == "Guaranteed"
    assert pod(limits=same)["status"]["qosClass"] == "Guaranteed"
    assert pod(requests={"cpu": "1"})["status"]["qosClass"] == "Burstable"


def test_timestamps_are_rfc3339_seconds_in_utc() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    assert podstatus.timestamp(moment) == "2026-11-28T01:02:03Z"
