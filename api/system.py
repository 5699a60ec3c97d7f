"""The routes around the executions: the mesh's events in, runtimes, health, OpenAPI."""

from __future__ import annotations

import logging

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.executions import caller, gateway_of, json_response
from api.models import Health, LimitsInfo, RuntimeInfo, Runtimes
from api.openapi import document
from execmesh.errors import InvalidEvent, TransientError
from execmesh.events import MAX_STDIN_BYTES, TERMINAL_EXECUTION_TYPES
from execmesh.mesh import IncomingEvent, decode_event
from execmesh.results import ExecutionStatus

logger = logging.getLogger(__name__)

STATUS_OF = {
    "io.execmesh.execution.queued": ExecutionStatus.QUEUED,
    "io.execmesh.execution.accepted": ExecutionStatus.RUNNING,
    "io.execmesh.pod.running": ExecutionStatus.RUNNING,
    "io.execmesh.execution.completed": ExecutionStatus.COMPLETED,
    "io.execmesh.execution.failed": ExecutionStatus.FAILED,
    "io.execmesh.execution.timed_out": ExecutionStatus.TIMED_OUT,
    "io.execmesh.execution.cancelled": ExecutionStatus.CANCELLED,
    "io.execmesh.execution.rejected": ExecutionStatus.REJECTED,
}


async def receive_event(request: Request) -> Response:
    """The subscriber of the ``api`` Trigger: 202 when handled, 400 never, 5xx to be retried."""
    gateway = gateway_of(request)
    try:
        event = decode_event(request.headers, await request.body())
    except InvalidEvent as error:
        return Response(str(error), 400)
    try:
        await gateway.live.append(event)
        await _follow_status(request, event)
    except TransientError as error:
        logger.warning("event %s %s: %s", event.type, event.id, error)
        return Response(str(error), 503)
    return Response(status_code=202)


async def _follow_status(request: Request, event: IncomingEvent) -> None:
    gateway = gateway_of(request)
    execution_id = getattr(event.payload, "execution_id", None)
    status = STATUS_OF.get(event.type)
    if not isinstance(execution_id, str) or status is None:
        return
    await anyio.to_thread.run_sync(gateway.records.advance_status, execution_id, status.value)
    if event.type in TERMINAL_EXECUTION_TYPES:
        record = await anyio.to_thread.run_sync(gateway.records.get, execution_id)
        if record is not None:
            await gateway.protection.release_slot(record.user_id, execution_id)


async def runtimes(request: Request) -> Response:
    gateway, _, headers = await caller(request)
    server = gateway.server
    found = await anyio.to_thread.run_sync(gateway.runtimes)
    body = Runtimes(
        runtimes=[RuntimeInfo(language=r.language, version=r.version) for r in found],
        max_limits=LimitsInfo(
            timeout_seconds=server.max_timeout_seconds,
            memory_mb=server.max_memory_mb,
            cpu_millis=server.max_cpu_millis,
            output_bytes=server.max_output_bytes,
        ),
        default_limits=LimitsInfo.model_validate(server.default.model_dump()),
        max_script_bytes=server.max_script_bytes,
        max_stdin_bytes=MAX_STDIN_BYTES,
    )
    return json_response(body, headers=headers)


async def liveness(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def readiness(request: Request) -> Response:
    gateway = gateway_of(request)
    checks: dict[str, str] = {}
    try:
        await anyio.to_thread.run_sync(lambda: gateway.database.command("ping"))
        checks["mongodb"] = "ok"
    except Exception as error:
        checks["mongodb"] = f"unavailable: {error}"
    try:
        await gateway.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:
        checks["redis"] = f"unavailable: {error}"
    healthy = all(value == "ok" for value in checks.values())
    health = Health(status="ok" if healthy else "unavailable", checks=checks)
    return json_response(health, 200 if healthy else 503)


async def openapi(request: Request) -> Response:
    return JSONResponse(document())
