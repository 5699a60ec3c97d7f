from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client import ApiClient, V1Pod

from execmesh.events import (
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionTimedOut,
    FailureType,
    PodRunning,
)
from execmesh.kube.mapping import map_pod, read_pod, stream_output, with_refs
from tests.support.pod_report import summary

EXECUTION_ID = "e-123"
UID = "7d4f6a1e-0000-4000-8000-000000000001"


def a_pod(
    phase: str,
    *,
    reason: str | None = None,
    message: str | None = None,
    state: dict[str, Any] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if state is not None:
        status["containerStatuses"] = [
            {
                "name": "executor",
                "image": "python:3.12-slim",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": state,
            }
        ]
    metadata: dict[str, Any] = {
        "name": f"exec-{EXECUTION_ID}",
        "namespace": "execmesh",
        "uid": UID,
        "resourceVersion": "42",
        "labels": {"execmesh.io/execution-id": EXECUTION_ID},
        "annotations": {"execmesh.io/timeout-seconds": "2.5"},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-28T01:00:00Z"
    return {
        "metadata": metadata,
        "spec": {
            "activeDeadlineSeconds": 8,
            "containers": [{"name": "executor", "image": "python:3.12-slim"}],
        },
        "status": status,
    }


def framed(stdout: bytes = b"", stderr: bytes = b"", truncated: bool = False) -> bytes:
    flag = b"1" if truncated else b"0"
    return (
        b"execmesh-output 1\n"
        + b"stdout %d %s\n" % (len(stdout), flag)
        + stdout
        + b"\n"
        + b"stderr %d 0\n" % len(stderr)
        + stderr
        + b"\nend\n"
    )


def terminated(
    reason: str = "Completed", exit_code: int = 0, message: str | None = None
) -> dict[str, Any]:
    return {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}


def finished(
    phase: str = "Succeeded",
    *,
    exit_code: int = 0,
    stdout: bytes = b"",
    stderr: bytes = b"",
    container_reason: str = "Completed",
    pod_reason: str | None = None,
    **report: Any,
) -> tuple[dict[str, Any], bytes]:
    message = summary(
        exit_code=exit_code, stdout_bytes=len(stdout), stderr_bytes=len(stderr), **report
    )
    pod = a_pod(
        phase,
        reason=pod_reason,
        state=terminated(container_reason, exit_code, message),
    )
    return pod, framed(stdout, stderr, truncated=report.get("stdout_truncated", False))


def test_a_finished_pod_says_when_its_program_started_in_its_terminal_event() -> None:
    pod, log = finished(stdout=b"1\n")
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"] = (
        "2026-11-28T01:02:03Z"
    )

    [completed] = map_pod(pod, log)

    assert isinstance(completed.payload, ExecutionCompleted)
    assert completed.payload.started_at == datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)


def test_a_pod_that_never_started_has_no_start_time() -> None:
    [event] = map_pod(finished()[0], finished()[1])

    assert event.payload.started_at is None  # type: ignore[union-attr]


def test_a_pending_pod_stands_for_nothing_yet() -> None:
    waiting = {"waiting": {"reason": "ContainerCreating"}}
    assert map_pod(a_pod("Pending", state=waiting)) == []
    assert map_pod(a_pod("Pending")) == []


def test_a_running_container_is_announced_with_its_start_time() -> None:
    pod = a_pod("Running", state={"running": {"startedAt": "2026-11-28T01:02:03Z"}})
    [event] = map_pod(pod)
    assert event.payload == PodRunning(
        execution_id=EXECUTION_ID,
        pod_name=f"exec-{EXECUTION_ID}",
        started_at=datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC),
    )
    assert event.cause == f"pod/{UID}"


def test_a_running_phase_whose_container_has_not_started_is_not_announced() -> None:
    assert map_pod(a_pod("Running", state={"waiting": {"reason": "ContainerCreating"}})) == []


@pytest.mark.parametrize(("phase", "exit_code"), [("Succeeded", 0), ("Failed", 3), ("Failed", 1)])
def test_a_program_that_ran_to_its_end_is_completed_whatever_its_exit_code(
    phase: str, exit_code: int
) -> None:
    pod, log = finished(phase, exit_code=exit_code, stdout=b"hi\n", stderr=b"oops")
    [event] = map_pod(pod, log)
    assert isinstance(event.payload, ExecutionCompleted)
    assert event.payload.exit_code == exit_code
    assert event.payload.stdout.data == "hi\n"
    assert event.payload.stderr.data == "oops"
    assert event.payload.usage.wall_ms == 12
    assert event.payload.usage.cpu_ms == 9
    assert event.payload.usage.peak_memory_bytes == 4096
    assert event.spilled == {}


def test_a_program_killed_by_a_signal_reports_the_signal() -> None:
    pod, log = finished("Failed", exit_code=137, signal=9, container_reason="Error")
    [event] = map_pod(pod, log)
    assert isinstance(event.payload, ExecutionCompleted)
    assert (event.payload.exit_code, event.payload.signal) == (137, 9)


@pytest.mark.parametrize(
    ("pod_reason", "container_reason", "report", "expected_type"),
    [
        ("Evicted", "Error", {}, FailureType.EVICTED),
        (None, "OOMKilled", {}, FailureType.OOM_KILLED),
        (None, "ContainerCannotRun", {}, FailureType.SANDBOX),
        (None, "StartError", {}, FailureType.SANDBOX),
    ],
)
def test_platform_failures_after_the_start_are_failed_with_their_type(
    pod_reason: str | None,
    container_reason: str,
    report: dict[str, Any],
    expected_type: FailureType,
) -> None:
    pod, log = finished(
        "Failed",
        exit_code=137,
        stdout=b"partial",
        container_reason=container_reason,
        pod_reason=pod_reason,
        **report,
    )
    [event] = map_pod(pod, log)
    assert isinstance(event.payload, ExecutionFailed)
    assert event.payload.error_type is expected_type
    assert event.payload.stdout.data == "partial"


@pytest.mark.parametrize(
    ("reason", "expected_type"),
    [
        ("ErrImagePull", FailureType.IMAGE),
        ("ImagePullBackOff", FailureType.IMAGE),
        ("InvalidImageName", FailureType.IMAGE),
        ("CreateContainerConfigError", FailureType.SANDBOX),
        ("CreateContainerError", FailureType.SANDBOX),
    ],
)
def test_a_pod_that_cannot_start_is_finished_and_failed(
    reason: str, expected_type: FailureType
) -> None:
    pod = a_pod("Pending", state={"waiting": {"reason": reason, "message": "no such image"}})
    assert read_pod(pod).finished and not read_pod(pod).needs_log
    [event] = map_pod(pod)
    assert isinstance(event.payload, ExecutionFailed)
    assert event.payload.error_type is expected_type
    assert event.payload.message == f"{reason}: no such image"


def test_the_pod_deadline_is_a_timeout_even_without_a_report() -> None:
    pod = a_pod("Failed", reason="DeadlineExceeded", message="Pod was active too long")
    [event] = map_pod(pod, b"")
    assert event.payload == ExecutionTimedOut(execution_id=EXECUTION_ID, timeout_seconds=2.5)


def test_the_entry_point_deadline_is_a_timeout_with_the_output_so_far() -> None:
    pod, log = finished(
        "Failed",
        exit_code=137,
        signal=9,
        timed_out=True,
        stdout=b"tick\n",
        container_reason="Error",
    )
    [event] = map_pod(pod, log)
    assert isinstance(event.payload, ExecutionTimedOut)
    assert event.payload.timeout_seconds == 2.5
    assert event.payload.stdout.data == "tick\n"


def test_the_deadline_wins_over_an_oom_kill_reported_at_the_same_time() -> None:
    pod, log = finished(
        "Failed", exit_code=137, container_reason="OOMKilled", pod_reason="DeadlineExceeded"
    )
    [event] = map_pod(pod, log)
    assert isinstance(event.payload, ExecutionTimedOut)


@pytest.mark.parametrize(
    ("message", "log", "expected"),
    [
        (None, b"", "no termination message"),
        ("not json", b"", "termination message is not JSON"),
        ('{"v":1,"error":"runtime-missing"}', b"", "runtime-missing"),
        (summary(stdout_bytes=5), framed(b"abc"), "does not match"),
        (summary(), b"garbage", "frame header"),
    ],
)
def test_a_finished_pod_without_a_sound_report_is_a_sandbox_failure(
    message: str | None, log: bytes, expected: str
) -> None:
    pod = a_pod("Failed", state=terminated("Error", 125, message))
    [event] = map_pod(pod, log)
    assert isinstance(event.payload, ExecutionFailed)
    assert event.payload.error_type is FailureType.SANDBOX
    assert expected in event.payload.message
    assert "exit code 125" in event.payload.message


def test_a_failed_pod_with_no_container_status_is_a_sandbox_failure() -> None:
    pod = a_pod("Failed", reason="NodeRestarted", message="the node restarted while it ran")
    [event] = map_pod(pod, b"")
    assert isinstance(event.payload, ExecutionFailed)
    assert event.payload.error_type is FailureType.SANDBOX
    assert "the node restarted while it ran" in event.payload.message


def test_output_over_the_inline_limit_is_spilled_and_not_carried() -> None:
    pod, log = finished(stdout=b"x" * 100, stderr=b"small", stdout_truncated=True)
    [event] = map_pod(pod, log, inline_limit=64)
    assert isinstance(event.payload, ExecutionCompleted)
    assert event.spilled == {"stdout": b"x" * 100}
    assert event.payload.stdout.data == ""
    assert event.payload.stdout.size == 100
    assert event.payload.stdout.truncated
    assert event.payload.stderr.data == "small"


def test_refs_fill_in_only_the_spilled_streams() -> None:
    pod, log = finished(stdout=b"x" * 100, stderr=b"small")
    [event] = map_pod(pod, log, inline_limit=64)
    payload = with_refs(event.payload, {"stdout": "outputs/e-123/stdout"})
    assert isinstance(payload, ExecutionCompleted)
    assert payload.stdout.ref == "outputs/e-123/stdout"
    assert payload.stdout.size == 100
    assert payload.stderr.ref is None


@pytest.mark.parametrize(
    ("data", "encoding", "text"),
    [
        (b"", "utf-8", ""),
        (b"caf\xc3\xa9", "utf-8", "café"),
        (b"\xff\xfe\x00", "base64", base64.b64encode(b"\xff\xfe\x00").decode()),
    ],
)
def test_inline_output_is_text_when_it_is_utf8_and_base64_otherwise(
    data: bytes, encoding: str, text: str
) -> None:
    output, spilled = stream_output(data, False, 1024)
    assert (output.encoding, output.data, output.size, spilled) == (encoding, text, len(data), b"")


def test_output_exactly_at_the_inline_limit_stays_inline() -> None:
    output, spilled = stream_output(b"y" * 64, False, 64)
    assert (output.data, spilled) == ("y" * 64, b"")


def test_the_same_pod_maps_to_the_same_events_every_time() -> None:
    pod, log = finished(exit_code=2, stdout=b"same")
    assert map_pod(pod, log) == map_pod(pod, log)


def test_a_v1pod_object_maps_as_its_json_does() -> None:
    pod, log = finished(exit_code=4, stdout=b"typed")
    typed = ApiClient().deserialize(json.dumps(pod), "V1Pod", "application/json")
    assert isinstance(typed, V1Pod)
    assert map_pod(typed, log) == map_pod(pod, log)


def test_the_execution_id_comes_from_the_label_and_the_pod_name_is_the_fallback() -> None:
    pod = a_pod("Pending")
    assert read_pod(pod).execution_id == EXECUTION_ID
    del pod["metadata"]["labels"]
    assert read_pod(pod).execution_id == f"exec-{EXECUTION_ID}"


def test_a_pod_being_deleted_says_so() -> None:
    assert read_pod(a_pod("Running", deleting=True)).deleting
    assert not read_pod(a_pod("Running")).deleting
