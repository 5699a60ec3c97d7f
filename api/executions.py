"""The ``/executions`` routes: submit (one or a batch), read, list, cancel, follow, output."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, get_args

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.auth import require_admin
from api.callback_policy import RefusedCallback
from api.gateway import Gateway
from api.models import BatchItem, BatchRequest, BatchResult, ExecutionList, QueueState, Status
from api.problems import Problem
from api.records import AlreadyRecorded, ListFilter, RequestRecord, body_hash, execution_id_for
from api.sse import valid_event_id
from api.submission import build_request, invalid_body, parse_body, parse_json
from api.views import BASE, accepted, execution_view, owner_of
from execmesh.client.keys import Principal
from execmesh.events import ExecutionCancelRequested
from execmesh.mesh import build_event
from execmesh.results import ExecutionDocument, read_stream

logger = logging.getLogger(__name__)

MAX_PAGE = 100
MAX_KEY_LENGTH = 255
LIST_PARAMETERS = frozenset({"status", "language", "since", "until", "cursor", "limit", "user"})
STATUSES: tuple[str, ...] = get_args(Status)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.state.gateway
    return gateway


async def caller(request: Request) -> tuple[Gateway, Principal, dict[str, str]]:
    """The gateway, the authenticated caller, and the rate-limit headers to answer with."""
    gateway = gateway_of(request)
    principal = await gateway.auth.principal(request)
    decision = await gateway.protection.hit(principal.user_id)
    if not decision.allowed:
        raise Problem(
            429,
            f"more than {decision.limit} requests per second; retry after "
            f"{decision.reset_seconds}s",
            code="rate_limited",
            headers=decision.headers(),
        )
    return gateway, principal, decision.headers()


def json_response(
    model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = model.model_dump_json()
    return Response(body, status, headers=dict(headers or {}), media_type="application/json")


async def submit(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    document = parse_json(await request.body())
    key = idempotency_key(request)
    execution_id, replayed = await submit_one(gateway, principal, document, key)
    url = f"{BASE}/executions/{execution_id}"
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(accepted(execution_id), 202, {**headers, "Location": url})


async def submit_batch(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    try:
        batch = BatchRequest.model_validate(parse_json(await request.body()))
    except ValidationError as error:
        raise invalid_body(error) from None
    key = idempotency_key(request)
    items = []
    for index, body in enumerate(batch.executions):
        item_key = None if key is None else f"{key}#{index}"
        try:
            execution_id, _ = await submit_one(
                gateway, principal, body.model_dump(mode="json", exclude_none=True), item_key
            )
        except Problem as problem:
            items.append(BatchItem(index=index, status=problem.status, problem=problem.to_body()))
        else:
            items.append(BatchItem(index=index, status=202, execution=accepted(execution_id)))
    return json_response(BatchResult(items=items), 200, headers=headers)


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise Problem(
            422, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", code="invalid_key"
        )
    return key


async def submit_one(
    gateway: Gateway, principal: Principal, document: Any, key: str | None
) -> tuple[str, bool]:
    """Record and publish one execution; its id and whether it was an idempotent replay."""
    body = parse_body(document)
    digest = body_hash(body.model_dump(mode="json"))
    execution_id = execution_id_for(principal.user_id, key)
    if key is not None:
        existing = await anyio.to_thread.run_sync(gateway.records.get, execution_id)
        if existing is not None:
            return _replay(existing, digest), True
    now = _now()
    event = build_request(
        body,
        execution_id=execution_id,
        user_id=principal.user_id,
        now=now,
        server=gateway.server,
        resolve=gateway.resolve,
    )
    if body.callback_url is not None:
        await check_callback(gateway, str(body.callback_url))
    now_ms = int(now.timestamp() * 1000)
    if not await gateway.protection.take_slot(principal.user_id, execution_id, now_ms):
        raise Problem(
            429,
            f"{gateway.settings.api_max_active_per_user} executions are already in flight; "
            "wait for one to finish",
            code="quota_exceeded",
            headers={"Retry-After": "1"},
        )
    callback = None if body.callback_url is None else str(body.callback_url)
    record = RequestRecord(event, digest, now, callback_url=callback)
    try:
        await anyio.to_thread.run_sync(gateway.records.insert, record)
    except AlreadyRecorded as race:
        return _replay(race.existing, digest), True
    except Exception:
        await gateway.protection.release_slot(principal.user_id, execution_id)
        raise
    # Recorded: from here on the outbox publishes it if this attempt fails.
    with anyio.move_on_after(5):
        await gateway.outbox.publish(record, mark_later=True)
    return execution_id, False


async def check_callback(gateway: Gateway, url: str) -> None:
    try:
        await gateway.callbacks.policy.allowed_addresses(url)
    except RefusedCallback as refusal:
        raise Problem(
            422,
            f"callback_url refused: {refusal}",
            code="callback_not_allowed",
            errors=[{"field": "callback_url", "message": str(refusal)}],
        ) from None


def _replay(existing: RequestRecord, digest: str) -> str:
    if existing.body_hash != digest:
        raise Problem(
            422,
            "this Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
        )
    return existing.execution_id


async def executions_root(request: Request) -> Response:
    """``/executions``: one route for both methods, so that a 405 lists them both."""
    if request.method == "POST":
        return await submit(request)
    return await list_executions(request)


async def get_execution(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    execution_id = request.path_params["execution_id"]
    record, document = await _owned(gateway, principal, execution_id)
    return json_response(execution_view(execution_id, record, document), 200, headers=headers)


async def list_executions(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    query = request.query_params
    unknown = sorted(set(query) - LIST_PARAMETERS)
    if unknown:
        raise Problem(400, f"unknown query parameter(s): {', '.join(unknown)}", code="bad_query")
    where = ListFilter(
        user_id=query.get("user") if principal.is_admin else principal.user_id,
        status=_choice(query.get("status"), STATUSES, "status"),
        language=query.get("language"),
        since=_time(query.get("since"), "since"),
        until=_time(query.get("until"), "until"),
    )
    limit = _int(query.get("limit", "20"), "limit", 1, MAX_PAGE)
    try:
        page = await anyio.to_thread.run_sync(
            gateway.records.page, where, query.get("cursor"), limit
        )
    except ValueError:
        raise Problem(400, "the cursor is not one this API gave out", code="bad_cursor") from None
    documents = [
        await anyio.to_thread.run_sync(gateway.executions.get, record.execution_id)
        for record in page.records
    ]
    items = [
        execution_view(record.execution_id, record, document)
        for record, document in zip(page.records, documents, strict=True)
    ]
    return json_response(ExecutionList(items=items, next_cursor=page.next_cursor), headers=headers)


async def cancel(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    execution_id = request.path_params["execution_id"]
    record, document = await _owned(gateway, principal, execution_id)
    if document is not None and document.status.is_terminal:
        raise Problem(
            409, f"the execution already ended: {document.status.value}", code="already_finished"
        )
    payload = ExecutionCancelRequested(execution_id=execution_id, requested_by=principal.user_id)
    event = build_event(payload, component="api", time=_now(), cause=f"api-cancel/{execution_id}")
    await gateway.sender.send(event)
    view = execution_view(execution_id, record, document)
    return json_response(view, 202, headers=headers)


async def events(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    execution_id = request.path_params["execution_id"]
    await _owned(gateway, principal, execution_id)
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if last is not None and not valid_event_id(last):
        raise Problem(400, f"Last-Event-ID {last!r} is not an id of this stream", code="bad_id")

    async def finished() -> str | None:
        document = await anyio.to_thread.run_sync(gateway.executions.get, execution_id)
        return document.status.value if document and document.status.is_terminal else None

    stream_id = uuid.uuid4().hex
    if not await gateway.protection.open_stream(principal.user_id, stream_id):
        raise Problem(
            429,
            f"{gateway.settings.api_max_streams_per_user} live event streams are already open; "
            "close one first",
            code="too_many_streams",
            headers={"Retry-After": "1"},
        )
    chunks = gateway.live.follow(execution_id, last, finished)
    stream = gateway.protection.while_open(principal.user_id, stream_id, chunks)
    sse_headers = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=sse_headers)


async def output(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    execution_id = request.path_params["execution_id"]
    stream = request.path_params["stream"]
    _, document = await _owned(gateway, principal, execution_id)
    result = None if document is None else document.result
    stored = None if result is None else getattr(result, stream, None)
    if stream not in ("stdout", "stderr") or stored is None:
        raise Problem(404, f"no {stream} for execution {execution_id} (yet)", code="no_output")
    data = await anyio.to_thread.run_sync(read_stream, gateway.outputs, stored)
    return Response(data, 200, headers=headers, media_type="application/octet-stream")


async def queue_state(request: Request) -> Response:
    gateway, principal, headers = await caller(request)
    require_admin(principal)
    usage = await anyio.to_thread.run_sync(gateway.admission.usage)
    state = QueueState(
        running=usage.running,
        queued=usage.queued,
        per_user=dict(usage.per_user),
        cpu_millis=usage.cpu_millis,
        memory_mb=usage.memory_mb,
    )
    return json_response(state, headers=headers)


async def _owned(
    gateway: Gateway, principal: Principal, execution_id: str
) -> tuple[RequestRecord | None, ExecutionDocument | None]:
    """The execution if the caller may see it; 404 otherwise, so ids of others stay secret."""
    record = await anyio.to_thread.run_sync(gateway.records.get, execution_id)
    document = await anyio.to_thread.run_sync(gateway.executions.get, execution_id)
    owner = owner_of(record, document)
    if owner is None or (owner != principal.user_id and not principal.is_admin):
        raise Problem(404, f"no execution {execution_id}", code="not_found")
    return record, document


def _now() -> datetime:
    now = datetime.now(UTC)
    # MongoDB keeps milliseconds: a cursor made from a stored time must compare equal to it.
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if value is not None and value not in allowed:
        raise Problem(400, f"{name} must be one of {', '.join(allowed)}", code="bad_query")
    return value


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Problem(400, f"{name} must be an ISO 8601 time", code="bad_query") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise Problem(400, f"{name} must be an integer from {low} to {high}", code="bad_query")
    return number
