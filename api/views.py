"""Pure mapping from what is stored to what the API shows."""

from __future__ import annotations

from datetime import UTC, datetime

from api.models import Accepted, Execution, Links, Output, Result, Usage
from api.records import RequestRecord
from execmesh.events import StreamOutput
from execmesh.results import ExecutionDocument, ExecutionResult, ExecutionStatus

BASE = "/api/v1"


def links(execution_id: str) -> Links:
    url = f"{BASE}/executions/{execution_id}"
    return Links(self=url, events=f"{url}/events", cancel=f"{url}/cancel")


def accepted(execution_id: str) -> Accepted:
    return Accepted(id=execution_id, status="requested", links=links(execution_id))


def owner_of(record: RequestRecord | None, document: ExecutionDocument | None) -> str | None:
    if record is not None:
        return record.user_id
    return None if document is None else document.user_id


def execution_view(
    execution_id: str, record: RequestRecord | None, document: ExecutionDocument | None
) -> Execution:
    """The execution as the API shows it; ``requested`` until the pipeline has seen it."""
    request = None if record is None else record.request
    known = document or ExecutionDocument(
        execution_id=execution_id, status=ExecutionStatus.REQUESTED, updated_at=datetime.now(UTC)
    )
    return Execution(
        id=execution_id,
        user_id=owner_of(record, document) or "",
        status=known.status.value,
        language=request.spec.language if request else known.language,
        version=request.spec.version if request else known.language_version,
        priority=request.priority.value if request else known.priority,
        submitted_at=request.submitted_at if request else known.submitted_at,
        queue_position=document.queue_position if document else None,
        started_at=document.started_at if document else None,
        finished_at=document.finished_at if document else None,
        result=result_view(execution_id, document.result) if document and document.result else None,
        links=links(execution_id),
    )


def result_view(execution_id: str, result: ExecutionResult) -> Result:
    return Result(
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=output_view(execution_id, "stdout", result.stdout),
        stderr=output_view(execution_id, "stderr", result.stderr),
        usage=Usage.model_validate(result.usage.model_dump()) if result.usage else None,
        error_type=result.error_type.value if result.error_type else None,
        code=result.code,
        message=result.message,
        timeout_seconds=result.timeout_seconds,
    )


def output_view(execution_id: str, stream: str, output: StreamOutput | None) -> Output | None:
    if output is None:
        return None
    url = f"{BASE}/executions/{execution_id}/output/{stream}"
    if output.ref is not None:
        # Claim check: too large to travel inline, so too large to show inline.
        return Output(data=None, size=output.size, truncated=output.truncated, url=url)
    return Output(
        data=output.data,
        encoding=output.encoding,
        size=output.size,
        truncated=output.truncated,
        url=url,
    )
