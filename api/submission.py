"""From an HTTP body to the ``execution.requested`` event, checked against the server's limits.

Pure: the same ``check_request`` the coordinator runs, so that what the API accepts is what
the coordinator admits, and a request it would reject gets a 422 naming the cap now.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from api.models import ExecutionRequest
from api.problems import Problem
from execmesh.admission.limits import (
    Admissible,
    RuntimeResolver,
    ServerLimits,
    check_request,
    defaults_for,
)
from execmesh.errors import PermanentError
from execmesh.events import ExecutionRequested, ExecutionSpec, Limits


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    # RecursionError: nesting deeper than the parser goes, which no request needs.
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise Problem(400, f"the body is not valid JSON: {error}", code="malformed_json") from None


def parse_body(document: Any) -> ExecutionRequest:
    try:
        return ExecutionRequest.model_validate(document)
    except ValidationError as error:
        raise invalid_body(error) from None


def invalid_body(error: ValidationError) -> Problem:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
        for e in error.errors(include_url=False)[:20]
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    return Problem(422, f"invalid request: {summary}", code="invalid_request", errors=errors)


def build_request(
    body: ExecutionRequest,
    *,
    execution_id: str,
    user_id: str,
    now: datetime,
    server: ServerLimits,
    resolve: RuntimeResolver,
) -> ExecutionRequested:
    """The event to publish; a ``Problem`` 422 for what the coordinator would reject."""
    spec = ExecutionSpec(
        language=body.language,
        version=body.version,
        script=body.script,
        stdin=body.stdin,
        args=tuple(body.args),
    )
    try:
        runtime = resolve(body.language, body.version)
    except PermanentError as error:
        raise Problem(422, str(error), code="unknown_runtime") from None
    limits: Limits | None = None
    if body.limits is not None:
        asked = body.limits.model_dump(exclude_none=True)
        limits = defaults_for(runtime, server).model_copy(update=asked)
    request = ExecutionRequested(
        execution_id=execution_id,
        user_id=user_id,
        spec=spec,
        limits=limits,
        priority=body.priority,
        submitted_at=now,
    )
    checked = check_request(request, server, resolve)
    if not isinstance(checked, Admissible):
        raise Problem(422, checked.reason, code=checked.code)
    # Canonical language and version ("py", "latest" -> "python", "3.11"), limits as asked.
    return request.model_copy(update={"spec": checked.spec})
