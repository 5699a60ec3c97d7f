"""The routes around the executions: the mesh's events in, runtimes, health, OpenAPI."""

from __future__ import annotations

import logging

import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.executions import caller, gateway_of, json_response
from api.gateway import Gateway
from api.models import Health, LimitsInfo, RuntimeInfo, Runtimes
from api.openapi import document
from api.views import execution_view
from execmesh.errors import InvalidEvent, TransientError
from execmesh.events import MAX_STDIN_BYTES, TERMINAL_EXECUTION_TYPES
from execmesh.mesh import IncomingEvent, decode_event
from execmesh.results import ExecutionStatus

logger = logging.getLogger(__name__)

RESULT_WAIT_ROUNDS = 20

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
        callback = await _follow_status(gateway, event)
    except TransientError as error:
        logger.warning("event %s %s: %s", event.type, event.id, error)
        return Response(str(error), 503)
    return Response(status_code=202, background=callback)


async def _follow_status(gateway: Gateway, event: IncomingEvent) -> BackgroundTask | None:
    """Copy the status to the request record; at the end, free the slot and call back."""
    execution_id = getattr(event.payload, "execution_id", None)
    status = STATUS_OF.get(event.type)
    if not isinstance(execution_id, str) or status is None:
        return None
    await anyio.to_thread.run_sync(gateway.records.advance_status, execution_id, status.value)
    if event.type not in TERMINAL_EXECUTION_TYPES:
        return None
    record = await anyio.to_thread.run_sync(gateway.records.get, execution_id)
    if record is None:
        return None
    await gateway.protection.release_slot(record.user_id, execution_id)
    if record.callback_url is None or not await gateway.callbacks.claim(execution_id):
        return None

    async def body() -> bytes:
        # The result_processor may store the result a moment after this event arrives.
        for _ in range(RESULT_WAIT_ROUNDS):
            document = await anyio.to_thread.run_sync(gateway.executions.get, execution_id)
            if document is not None and document.result is not None:
                break
            await anyio.sleep(0.5)
        return execution_view(execution_id, record, document).model_dump_json().encode()

    return BackgroundTask(gateway.callbacks.deliver, record.callback_url, body)


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

    async def ping_mongodb() -> None:
        await anyio.to_thread.run_sync(lambda: gateway.database.command("ping"))

    checks: dict[str, str] = {}
    for name, ping in (("mongodb", ping_mongodb), ("redis", gateway.redis.ping)):
        try:
            await ping()
            checks[name] = "ok"
        except Exception as error:
            # Unauthenticated: what failed is named, where and why only in the log.
            logger.warning("readiness: %s: %s", name, error)
            checks[name] = "unavailable"
    healthy = all(value == "ok" for value in checks.values())
    health = Health(status="ok" if healthy else "unavailable", checks=checks)
    return json_response(health, 200 if healthy else 503)


async def openapi(request: Request) -> Response:
    return JSONResponse(document())
