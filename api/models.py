"""The HTTP bodies of the API: validated pydantic models at the edge, the OpenAPI source."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from execmesh.events import MAX_SCRIPT_BYTES, MAX_STDIN_BYTES, Priority

MAX_BATCH = 20

Status = Literal[
    "requested", "queued", "running", "completed", "failed", "timed_out", "cancelled", "rejected"
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsRequest(Body):
    """Any limit left out gets the server's default for the runtime."""

    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    memory_mb: int | None = Field(default=None, gt=0, le=65536)
    cpu_millis: int | None = Field(default=None, gt=0, le=64000)
    output_bytes: int | None = Field(default=None, gt=0, le=64 * 1024 * 1024)


class ExecutionRequest(Body):
    language: str = Field(min_length=1, max_length=32, examples=["python"])
    version: str = Field(default="latest", min_length=1, max_length=32)
    script: str = Field(max_length=MAX_SCRIPT_BYTES)
    stdin: str | None = Field(default=None, max_length=MAX_STDIN_BYTES)
    args: list[Annotated[str, Field(max_length=1024)]] = Field(default=[], max_length=64)
    limits: LimitsRequest | None = None
    priority: Priority = Priority.NORMAL
    callback_url: AnyHttpUrl | None = Field(
        default=None,
        description="POSTed the execution once it ended; http(s) to a public address only, "
        "without user name or password (422 `callback_not_allowed` otherwise)",
    )


class BatchRequest(Body):
    executions: list[ExecutionRequest] = Field(min_length=1, max_length=MAX_BATCH)


class Links(BaseModel):
    self: str
    events: str
    cancel: str


class Accepted(BaseModel):
    id: str
    status: Status
    links: Links


class BatchItem(BaseModel):
    index: int
    status: int
    execution: Accepted | None = None
    problem: dict[str, Any] | None = None


class BatchResult(BaseModel):
    items: list[BatchItem]


class Output(BaseModel):
    data: str | None = Field(description="the output, or null when it is only available by link")
    encoding: Literal["utf-8", "base64"] = "utf-8"
    size: int
    truncated: bool
    url: str | None = None


class Usage(BaseModel):
    wall_ms: int | None = None
    cpu_ms: int | None = None
    peak_memory_bytes: int | None = None


class Result(BaseModel):
    exit_code: int | None = None
    signal: int | None = None
    stdout: Output | None = None
    stderr: Output | None = None
    usage: Usage | None = None
    error_type: str | None = None
    code: str | None = None
    message: str | None = None
    timeout_seconds: float | None = None


class Execution(BaseModel):
    id: str
    user_id: str
    status: Status
    language: str | None = None
    version: str | None = None
    priority: str | None = None
    submitted_at: datetime | None = None
    queue_position: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Result | None = None
    links: Links


class ExecutionList(BaseModel):
    items: list[Execution]
    next_cursor: str | None = None


class RuntimeInfo(BaseModel):
    language: str
    version: str


class LimitsInfo(BaseModel):
    timeout_seconds: float
    memory_mb: int
    cpu_millis: int
    output_bytes: int


class Runtimes(BaseModel):
    runtimes: list[RuntimeInfo]
    max_limits: LimitsInfo
    default_limits: LimitsInfo
    max_script_bytes: int
    max_stdin_bytes: int


class QueueState(BaseModel):
    running: int
    queued: int
    per_user: dict[str, int]
    cpu_millis: int
    memory_mb: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


class ProblemDetails(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str | None = None
