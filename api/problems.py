"""Every error the API answers, as ``application/problem+json`` (RFC 9457).

Routes raise ``Problem``; the app's exception handlers turn it, Starlette's own HTTP errors,
the execmesh error hierarchy and anything unexpected into one shape with a clear ``detail``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from execmesh.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://execmesh.dev/problems/"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.headers = dict(headers or {})
        self.extensions = extensions

    def to_body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.code if self.code else "about:blank",
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.code:
            body["code"] = self.code
        return body | self.extensions


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    body = json.dumps(problem.to_body(instance), separators=(",", ":")).encode()
    return Response(body, problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


async def on_problem(request: Request, error: Exception) -> Response:
    assert isinstance(error, Problem)
    return problem_response(error, request.url.path)


async def on_http_exception(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    detail = error.detail if error.detail != TITLES.get(error.status_code) else None
    problem = Problem(
        error.status_code,
        detail or _default_detail(error.status_code, request),
        headers=error.headers,
    )
    return problem_response(problem, request.url.path)


async def on_execmesh_error(request: Request, error: Exception) -> Response:
    if isinstance(error, TransientError):
        logger.warning("%s %s: %s", request.method, request.url.path, error)
        # The cause names internal hosts and ports: it goes to the log, not to the caller.
        problem = Problem(503, "a dependency is unavailable, try again", code="unavailable")
        problem.headers["Retry-After"] = "1"
    elif isinstance(error, PermanentError):
        problem = Problem(422, str(error), code="invalid")
    else:
        return await on_unexpected(request, error)
    return problem_response(problem, request.url.path)


async def on_unexpected(request: Request, error: Exception) -> Response:
    logger.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    problem = Problem(500, "an unexpected error; it has been logged", code="internal")
    return problem_response(problem, request.url.path)


def _default_detail(status: int, request: Request) -> str:
    if status == 404:
        return f"no such resource: {request.url.path}"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return TITLES.get(status, "error")
