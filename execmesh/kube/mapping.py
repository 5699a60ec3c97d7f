"""Pod objects to domain events: a pure mapping, with no API calls, logging or clocks.

The monitor hands in a pod (a ``V1Pod`` or the JSON dict the API serves) and, once the pod
has finished, the bytes of its log; it gets back the events that pod stands for. Output that
is too large to travel inline comes back as ``spilled`` bytes, which the monitor stores
(claim check) before it fills in the reference with ``with_refs``.

What a pod means, in order of precedence:

- waiting on an image that cannot be pulled or named: execution.failed, image; on a
  container the runtime cannot create or start: execution.failed, sandbox;
- pod reason ``DeadlineExceeded``, or the entry point's report that it stopped the program at
  its deadline: execution.timed_out, with the output so far;
- pod reason ``Evicted``: execution.failed, evicted;
- container terminated ``OOMKilled``: execution.failed, oom_killed;
- finished without a sound report from the entry point: execution.failed, sandbox;
- finished with its report: execution.completed with the program's own exit code, zero or
  not (a compile error of a compiled language included: its exit code and stderr say so);
- a running container: pod.running.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubernetes.client import ApiClient, V1Pod

from execmesh.errors import PermanentError
from execmesh.events import (
    MAX_INLINE_OUTPUT_BYTES,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionTimedOut,
    FailureType,
    Payload,
    PodRunning,
    ResourceUsage,
    StreamOutput,
)
from execmesh.pods.manifest import (
    EXECUTION_ID_ANNOTATION,
    EXECUTION_ID_LABEL,
    TIMEOUT_ANNOTATION,
)
from execmesh.pods.report import PodReport, parse_pod_report

PodLike = V1Pod | Mapping[str, Any]

MAX_MESSAGE_CHARS = 4096

IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
# Waiting or terminated reasons that mean the container runtime could not run the container.
SANDBOX_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "ContainerCannotRun",
        "StartError",
        "PreStartHookError",
        "SandboxError",
    }
)


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ContainerState:
    """The first container's state, as much of it as the pod says."""

    running: bool = False
    started_at: datetime | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated: bool = False
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class PodState:
    """What the mapping needs to know about a pod, read once from either representation."""

    name: str
    namespace: str
    uid: str
    execution_id: str
    resource_version: str
    phase: Phase
    reason: str | None
    message: str | None
    timeout_seconds: float | None
    container: ContainerState
    deleting: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.FAILED) or self.unstartable

    @property
    def unstartable(self) -> bool:
        """Waiting on something that will not come: a bad image or a broken sandbox."""
        reason = self.container.waiting_reason
        return reason in IMAGE_REASONS or reason in SANDBOX_REASONS

    @property
    def needs_log(self) -> bool:
        return self.finished and not self.unstartable


@dataclass(frozen=True)
class PodEvent:
    """One event a pod stands for; ``spilled`` holds output to store before emitting."""

    payload: Payload
    cause: str
    spilled: Mapping[str, bytes] = field(default_factory=dict)


def read_pod(pod: PodLike) -> PodState:
    raw = _as_dict(pod)
    metadata = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    name = str(metadata.get("name", ""))
    deadline = annotations.get(TIMEOUT_ANNOTATION, spec.get("activeDeadlineSeconds"))
    return PodState(
        name=name,
        namespace=str(metadata.get("namespace", "")),
        uid=str(metadata.get("uid") or name),
        execution_id=str(
            labels.get(EXECUTION_ID_LABEL) or annotations.get(EXECUTION_ID_ANNOTATION) or name
        ),
        resource_version=str(metadata.get("resourceVersion", "")),
        phase=_phase(status.get("phase")),
        reason=status.get("reason"),
        message=status.get("message"),
        timeout_seconds=_float_or_none(deadline),
        container=_container_state(status.get("containerStatuses") or []),
        deleting=metadata.get("deletionTimestamp") is not None,
    )


def map_pod(
    pod: PodLike | PodState,
    log: bytes | None = None,
    *,
    inline_limit: int = MAX_INLINE_OUTPUT_BYTES,
) -> list[PodEvent]:
    """The events ``pod`` stands for now; ``log`` is the pod log once it has finished."""
    state = pod if isinstance(pod, PodState) else read_pod(pod)
    cause = f"pod/{state.uid}"
    if not state.finished:
        if state.phase is Phase.RUNNING and state.container.running:
            return [_running(state, cause)]
        return []
    return [_terminal(state, log or b"", inline_limit, cause)]


def _running(state: PodState, cause: str) -> PodEvent:
    running = PodRunning(
        execution_id=state.execution_id,
        pod_name=state.name,
        started_at=state.container.started_at,
    )
    return PodEvent(running, cause)


def with_refs(payload: Payload, refs: Mapping[str, str]) -> Payload:
    """``payload`` with the claim-check reference of each spilled stream filled in."""
    updates = {
        name: getattr(payload, name).model_copy(update={"ref": ref}) for name, ref in refs.items()
    }
    return payload.model_copy(update=updates)


def stream_output(data: bytes, truncated: bool, inline_limit: int) -> tuple[StreamOutput, bytes]:
    """The event's view of one stream, and the bytes to spill (empty when inline)."""
    if len(data) > inline_limit:
        return StreamOutput(size=len(data), truncated=truncated), data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        encoded = base64.b64encode(data).decode("ascii")
        return StreamOutput(
            data=encoded, encoding="base64", size=len(data), truncated=truncated
        ), b""
    return StreamOutput(data=text, size=len(data), truncated=truncated), b""


@dataclass(frozen=True)
class _Result:
    """What the entry point reported, in the shape the terminal events carry."""

    stdout: StreamOutput = field(default_factory=StreamOutput)
    stderr: StreamOutput = field(default_factory=StreamOutput)
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    spilled: Mapping[str, bytes] = field(default_factory=dict)


def _terminal(state: PodState, log: bytes, inline_limit: int, cause: str) -> PodEvent:
    container = state.container
    if state.unstartable:
        kind = (
            FailureType.IMAGE if container.waiting_reason in IMAGE_REASONS else FailureType.SANDBOX
        )
        detail = container.waiting_message or container.waiting_reason or ""
        return _failed(state, kind, f"{container.waiting_reason}: {detail}", cause, _Result())
    report, report_error = _parse_report(container.message, log)
    result = _result(report, inline_limit)
    if state.reason == "DeadlineExceeded" or (report is not None and report.timed_out):
        timed_out = ExecutionTimedOut(
            execution_id=state.execution_id,
            timeout_seconds=state.timeout_seconds or 0.0,
            stdout=result.stdout,
            stderr=result.stderr,
            usage=result.usage,
            started_at=container.started_at,
        )
        return PodEvent(timed_out, cause, result.spilled)
    if state.reason == "Evicted":
        message = f"Evicted: {state.message or 'the node evicted the pod'}"
        return _failed(state, FailureType.EVICTED, message, cause, result)
    if container.reason == "OOMKilled":
        message = "OOMKilled: the program used more memory than its limit"
        return _failed(state, FailureType.OOM_KILLED, message, cause, result)
    if container.reason in SANDBOX_REASONS or report is None:
        message = _sandbox_message(state, report_error)
        return _failed(state, FailureType.SANDBOX, message, cause, result)
    completed = ExecutionCompleted(
        execution_id=state.execution_id,
        exit_code=report.exit_code,
        signal=report.signal,
        stdout=result.stdout,
        stderr=result.stderr,
        usage=result.usage,
        started_at=container.started_at,
    )
    return PodEvent(completed, cause, result.spilled)


def _failed(
    state: PodState, kind: FailureType, message: str, cause: str, result: _Result
) -> PodEvent:
    failed = ExecutionFailed(
        execution_id=state.execution_id,
        error_type=kind,
        message=message[:MAX_MESSAGE_CHARS],
        stdout=result.stdout,
        stderr=result.stderr,
        usage=result.usage,
        started_at=state.container.started_at,
    )
    return PodEvent(failed, cause, result.spilled)


def _sandbox_message(state: PodState, report_error: str) -> str:
    container = state.container
    parts = [
        f"pod {state.phase.value}",
        state.reason and f"reason {state.reason}",
        state.message,
        container.reason and f"container {container.reason}",
        container.exit_code is not None and f"exit code {container.exit_code}",
        report_error and f"no report from the entry point: {report_error}",
    ]
    return "; ".join(str(part) for part in parts if part)


def _parse_report(termination_message: str | None, log: bytes) -> tuple[PodReport | None, str]:
    if not termination_message:
        return None, "no termination message"
    try:
        return parse_pod_report(termination_message, log), ""
    except PermanentError as error:
        return None, str(error)


def _result(report: PodReport | None, inline_limit: int) -> _Result:
    if report is None:
        return _Result()
    stdout, stdout_spill = stream_output(report.stdout, report.stdout_truncated, inline_limit)
    stderr, stderr_spill = stream_output(report.stderr, report.stderr_truncated, inline_limit)
    spilled = {name: data for name, data in (("stdout", stdout_spill), ("stderr", stderr_spill))}
    return _Result(
        stdout=stdout,
        stderr=stderr,
        usage=_usage(report),
        spilled={name: data for name, data in spilled.items() if data},
    )


def _usage(report: PodReport | None) -> ResourceUsage:
    if report is None:
        return ResourceUsage()
    return ResourceUsage(
        wall_ms=report.wall_ms, cpu_ms=report.cpu_ms, peak_memory_bytes=report.peak_memory_bytes
    )


def _as_dict(pod: PodLike) -> Mapping[str, Any]:
    if isinstance(pod, V1Pod):
        serialized: dict[str, Any] = _serializer().sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
        return serialized
    return pod


@functools.cache
def _serializer() -> ApiClient:
    # Only its (pure) JSON serialisation is used; it never opens a connection.
    return ApiClient()


def _phase(value: object) -> Phase:
    try:
        return Phase(str(value))
    except ValueError:
        return Phase.UNKNOWN


def _container_state(statuses: list[Mapping[str, Any]]) -> ContainerState:
    if not statuses:
        return ContainerState()
    state = statuses[0].get("state") or {}
    if (running := state.get("running")) is not None:
        return ContainerState(running=True, started_at=_time_or_none(running.get("startedAt")))
    if waiting := state.get("waiting"):
        return ContainerState(
            waiting_reason=waiting.get("reason"), waiting_message=waiting.get("message")
        )
    if (terminated := state.get("terminated")) is not None:
        return ContainerState(
            terminated=True,
            started_at=_time_or_none(terminated.get("startedAt")),
            exit_code=terminated.get("exitCode"),
            signal=terminated.get("signal"),
            reason=terminated.get("reason"),
            message=terminated.get("message"),
        )
    return ContainerState()


def _time_or_none(value: object) -> datetime | None:
    if isinstance(value, datetime) or value is None:
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _float_or_none(value: object) -> float | None:
    try:
        return None if value is None else float(str(value))
    except ValueError:
        return None
