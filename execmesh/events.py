"""The event catalogue: every CloudEvent type execmesh speaks, with its typed payload.

The CloudEvent ``type`` is the key of the catalogue. Payloads are versioned by
``schema_version``; a version this code does not know is refused rather than guessed at.
JSON Schemas in ``eventing/schemas/`` are generated from these models (``make schemas``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execmesh.errors import InvalidEvent

TYPE_PREFIX = "io.execmesh."
SCHEMA_VERSION = 1

# DNS-1123 friendly so the id can name pods, configmaps and Kafka keys as it is.
ExecutionId = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
UserId = Annotated[str, Field(min_length=1, max_length=128)]
# Why something was refused or ended: a sentence or a few, never a document.
Reason = Annotated[str, Field(max_length=4096)]
# Events must stay well under the 64 KiB CloudEvents intermediaries are required to carry.
MAX_SCRIPT_BYTES = 32 * 1024
MAX_STDIN_BYTES = 16 * 1024
MAX_INLINE_OUTPUT_BYTES = 16 * 1024


class UnknownSchemaVersion(InvalidEvent):
    """A well-formed event whose payload version this code does not know."""


def source_of(component: str) -> str:
    return f"/execmesh/{component}"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class TerminalStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class FailureType(StrEnum):
    IMAGE = "image"
    SANDBOX = "sandbox"
    OOM_KILLED = "oom_killed"
    EVICTED = "evicted"
    API = "api"
    INTERNAL = "internal"
    # The pod never started running within the saga's start-up budget (queueing, pod start).
    STARTUP_TIMEOUT = "startup_timeout"


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(Model):
    timeout_seconds: float = Field(gt=0, le=3600)
    memory_mb: int = Field(gt=0, le=65536)
    cpu_millis: int = Field(gt=0, le=64000)
    output_bytes: int = Field(gt=0, le=64 * 1024 * 1024)


class StreamOutput(Model):
    """One output stream: inline when small, otherwise stored first and referenced."""

    data: str = Field(default="", max_length=MAX_INLINE_OUTPUT_BYTES * 2)
    encoding: Literal["utf-8", "base64"] = "utf-8"
    size: int = Field(default=0, ge=0)
    truncated: bool = False
    ref: str | None = None


class ResourceUsage(Model):
    wall_ms: int | None = Field(default=None, ge=0)
    cpu_ms: int | None = Field(default=None, ge=0)
    peak_memory_bytes: int | None = Field(default=None, ge=0)


class Payload(Model):
    """Base of every event payload; ``TYPE`` is its CloudEvent type."""

    TYPE: ClassVar[str]
    schema_version: Literal[1] = 1

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ExecutionPayload(Payload):
    execution_id: ExecutionId


class ExecutionSpec(Model):
    """What to run: carried by the request, the acceptance and the pod request."""

    language: str = Field(min_length=1, max_length=32)
    version: str = Field(min_length=1, max_length=32)
    script: str = Field(max_length=MAX_SCRIPT_BYTES)
    stdin: str | None = Field(default=None, max_length=MAX_STDIN_BYTES)
    args: tuple[Annotated[str, Field(max_length=1024)], ...] = Field(default=(), max_length=64)


class ExecutionRequested(ExecutionPayload):
    TYPE = "io.execmesh.execution.requested"
    user_id: UserId
    spec: ExecutionSpec
    limits: Limits | None = None
    priority: Priority = Priority.NORMAL
    submitted_at: datetime


class ExecutionQueued(ExecutionPayload):
    TYPE = "io.execmesh.execution.queued"
    user_id: UserId
    priority: Priority
    position: int = Field(ge=0)


class ExecutionAccepted(ExecutionPayload):
    TYPE = "io.execmesh.execution.accepted"
    user_id: UserId
    spec: ExecutionSpec
    limits: Limits
    priority: Priority
    lease_expires_at: datetime


class ExecutionRejected(ExecutionPayload):
    TYPE = "io.execmesh.execution.rejected"
    user_id: UserId
    code: str = Field(max_length=64)
    reason: Reason


class ExecutionCancelRequested(ExecutionPayload):
    TYPE = "io.execmesh.execution.cancel_requested"
    requested_by: UserId | None = None
    reason: Reason = "cancelled by user"


class ExecutionCancelled(ExecutionPayload):
    TYPE = "io.execmesh.execution.cancelled"
    reason: Reason


class PodCreateRequested(ExecutionPayload):
    TYPE = "io.execmesh.pod.create_requested"
    spec: ExecutionSpec
    limits: Limits


class PodDeleteRequested(ExecutionPayload):
    TYPE = "io.execmesh.pod.delete_requested"
    reason: str


class PodCreated(ExecutionPayload):
    TYPE = "io.execmesh.pod.created"
    namespace: str
    pod_name: str


class PodDeleted(ExecutionPayload):
    TYPE = "io.execmesh.pod.deleted"
    namespace: str
    pod_name: str


class PodRunning(ExecutionPayload):
    TYPE = "io.execmesh.pod.running"
    pod_name: str
    started_at: datetime | None = None


class ExecutionCompleted(ExecutionPayload):
    """The user's program ran to its end, whatever its exit code."""

    TYPE = "io.execmesh.execution.completed"
    exit_code: int
    signal: int | None = None
    stdout: StreamOutput = StreamOutput()
    stderr: StreamOutput = StreamOutput()
    usage: ResourceUsage = ResourceUsage()
    # When the program started, as the pod says: a pod seen only once it ended has no
    # pod.running, and the result still needs its start.
    started_at: datetime | None = None


class ExecutionFailed(ExecutionPayload):
    """The platform could not start the program in time or run it to its end (image, OOM...)."""

    TYPE = "io.execmesh.execution.failed"
    error_type: FailureType
    message: str = Field(max_length=4096)
    stdout: StreamOutput = StreamOutput()
    stderr: StreamOutput = StreamOutput()
    usage: ResourceUsage = ResourceUsage()
    # When the program started, as the pod says: a pod seen only once it ended has no
    # pod.running, and the result still needs its start.
    started_at: datetime | None = None


class ExecutionTimedOut(ExecutionPayload):
    TYPE = "io.execmesh.execution.timed_out"
    timeout_seconds: float
    stdout: StreamOutput = StreamOutput()
    stderr: StreamOutput = StreamOutput()
    usage: ResourceUsage = ResourceUsage()
    # When the program started, as the pod says: a pod seen only once it ended has no
    # pod.running, and the result still needs its start.
    started_at: datetime | None = None


class ResultStored(ExecutionPayload):
    TYPE = "io.execmesh.result.stored"
    status: TerminalStatus


class SagaCompleted(ExecutionPayload):
    TYPE = "io.execmesh.saga.completed"
    status: TerminalStatus


class SagaCompensated(ExecutionPayload):
    TYPE = "io.execmesh.saga.compensated"
    status: TerminalStatus
    reason: str
    steps: tuple[str, ...] = ()


class DlqParked(Payload):
    TYPE = "io.execmesh.dlq.parked"
    dead_letter_id: str
    original_id: str
    original_type: str
    destination: str
    attempts: int = Field(ge=0)
    last_error: str = Field(max_length=4096)


class ReplayRequested(Payload):
    """Start a replay session: which history, where to, how fast."""

    TYPE = "io.execmesh.replay.requested"
    session_id: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    execution_ids: tuple[str, ...] = Field(default=(), max_length=1000)
    types: tuple[str, ...] = Field(default=(), max_length=100)
    exclude_types: tuple[str, ...] = Field(default=(), max_length=100)
    since: datetime | None = None
    until: datetime | None = None
    user_id: UserId | None = None
    dry_run: bool = False
    target: str = Field(default="broker", max_length=2048)
    speed: float | None = Field(default=None, gt=0, le=10000)
    batch_size: int = Field(default=100, ge=1, le=1000)
    max_count: int | None = Field(default=None, ge=1)
    reprocess: bool = False


class ReplaySession(Payload):
    TYPE = "io.execmesh.replay.session"
    session_id: str
    phase: Literal["started", "finished"]
    state: str = "running"
    matched: int = Field(default=0, ge=0)
    emitted: int = Field(default=0, ge=0)


class PingTick(Payload):
    """The PingSource's tick (``eventing/sources/ping.yaml``): the pipeline's clock."""

    TYPE = "dev.knative.sources.ping"
    model_config = ConfigDict(frozen=True, extra="ignore")
    tick: bool = True


class Untyped(Payload):
    """Stands in for the payload of an event outside the catalogue, or one that fails its
    model, in the few functions that must take every event as it is (recorder, dead letters);
    they read the raw ``data`` of the event instead."""

    TYPE = "*"


CATALOGUE: Mapping[str, type[Payload]] = {
    model.TYPE: model
    for model in (
        ExecutionRequested,
        ExecutionQueued,
        ExecutionAccepted,
        ExecutionRejected,
        ExecutionCancelRequested,
        ExecutionCancelled,
        PodCreateRequested,
        PodDeleteRequested,
        PodCreated,
        PodDeleted,
        PodRunning,
        ExecutionCompleted,
        ExecutionFailed,
        ExecutionTimedOut,
        ResultStored,
        SagaCompleted,
        SagaCompensated,
        DlqParked,
        ReplayRequested,
        ReplaySession,
        PingTick,
    )
}

TERMINAL_EXECUTION_TYPES: frozenset[str] = frozenset(
    {
        ExecutionCompleted.TYPE,
        ExecutionFailed.TYPE,
        ExecutionTimedOut.TYPE,
        ExecutionCancelled.TYPE,
        ExecutionRejected.TYPE,
    }
)


def parse_payload(ce_type: str, data: object) -> Payload:
    """Validate ``data`` as the payload of ``ce_type``; ``InvalidEvent`` if it can never be."""
    model = CATALOGUE.get(ce_type)
    if model is None:
        raise InvalidEvent(f"unknown event type {ce_type!r}")
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"{ce_type}: data must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise UnknownSchemaVersion(f"{ce_type}: unknown schema_version {version!r}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidEvent(f"{ce_type}: {_first_errors(error)}") from error


def _first_errors(error: ValidationError, limit: int = 3) -> str:
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
        for e in error.errors()[:limit]
    ]
    return "; ".join(parts)
