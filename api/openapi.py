"""The OpenAPI 3.1 document of the API, generated from the body models; checked in as
``api/openapi.json``. ``python -m api.openapi`` rewrites it, ``--check`` fails when stale."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import models

CHECKED_IN = Path(__file__).with_name("openapi.json")
BODY_MODELS: tuple[type[BaseModel], ...] = (
    models.ExecutionRequest,
    models.BatchRequest,
    models.Accepted,
    models.BatchResult,
    models.Execution,
    models.ExecutionList,
    models.Runtimes,
    models.QueueState,
    models.Health,
    models.ProblemDetails,
)
ID = {"name": "execution_id", "in": "path", "required": True, "schema": {"type": "string"}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": ref("ProblemDetails")}},
    }


def ok(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


COMMON = {
    "401": problem("missing or invalid API key"),
    "429": problem("rate limit or quota exceeded (executions in flight, live streams open)"),
    "503": problem("a dependency is unavailable"),
}


def operation(
    summary: str, responses: dict[str, Any], *, body: str | None = None, **extra: Any
) -> dict[str, Any]:
    result: dict[str, Any] = {"summary": summary, "responses": {**responses, **COMMON}, **extra}
    if body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return result


IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def paths() -> dict[str, Any]:
    invalid = problem("invalid request, unknown runtime or limits above the caps")
    return {
        "/api/v1/executions": {
            "post": operation(
                "Submit an execution",
                {
                    "202": ok("Accepted", "recorded; it will run"),
                    "400": problem("malformed JSON"),
                    "413": problem("body too large"),
                    "422": invalid,
                },
                body="ExecutionRequest",
                parameters=[IDEMPOTENCY],
            ),
            "get": operation(
                "The caller's executions, newest first",
                {"200": ok("ExecutionList"), "400": problem("bad query")},
                parameters=[
                    _query("status", {"type": "string", "enum": list(get_args(models.Status))}),
                    _query("language", {"type": "string"}),
                    _query("since", {"type": "string", "format": "date-time"}),
                    _query("until", {"type": "string", "format": "date-time"}),
                    _query("cursor", {"type": "string"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                ],
            ),
        },
        "/api/v1/executions/batch": {
            "post": operation(
                "Submit up to 20 executions; one result per item",
                {
                    "200": ok("BatchResult"),
                    "400": problem("malformed JSON"),
                    "413": problem("body too large"),
                    "422": invalid,
                },
                body="BatchRequest",
                parameters=[IDEMPOTENCY],
            )
        },
        "/api/v1/executions/{execution_id}": {
            "get": operation(
                "Status and result of an execution",
                {"200": ok("Execution"), "404": problem("no such execution of the caller")},
                parameters=[ID],
            )
        },
        "/api/v1/executions/{execution_id}/cancel": {
            "post": operation(
                "Ask to cancel an execution",
                {
                    "202": ok("Execution"),
                    "404": problem("no such execution of the caller"),
                    "409": problem("the execution already ended"),
                },
                parameters=[ID],
            )
        },
        "/api/v1/executions/{execution_id}/events": {
            "get": operation(
                "Server-Sent Events of the lifecycle; resumable with Last-Event-ID",
                {
                    "200": {
                        "description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": problem("bad Last-Event-ID"),
                    "404": problem("no such execution of the caller"),
                },
                parameters=[
                    ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
                    },
                ],
            )
        },
        "/api/v1/executions/{execution_id}/output/{stream}": {
            "get": operation(
                "The whole stdout or stderr of a finished execution",
                {
                    "200": {
                        "description": "the bytes",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "404": problem("no such execution or no output yet"),
                },
                parameters=[
                    ID,
                    {
                        "name": "stream",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["stdout", "stderr"]},
                    },
                ],
            )
        },
        "/api/v1/runtimes": {
            "get": operation("Languages, versions and limits", {"200": ok("Runtimes")})
        },
        "/api/v1/admin/queue": {
            "get": operation(
                "The admission queue (admin keys only)",
                {"200": ok("QueueState"), "403": problem("not an admin key")},
            )
        },
        "/health/liveness": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": {"200": ok("Health")},
            }
        },
        "/health/readiness": {
            "get": {
                "summary": "MongoDB and Redis answer",
                "security": [],
                "responses": {"200": ok("Health"), "503": ok("Health", "not ready")},
            }
        },
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


@functools.cache
def document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(model, "validation") for model in BODY_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "execmesh",
            "version": "1.0.0",
            "description": "Run untrusted code through the execmesh pipeline.",
        },
        "paths": paths(),
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def rendered() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if not CHECKED_IN.exists() or CHECKED_IN.read_text() != rendered():
            print(f"{CHECKED_IN} is stale: run `python -m api.openapi`", file=sys.stderr)
            return 1
        return 0
    CHECKED_IN.write_text(rendered())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
