"""A small synchronous client of the execmesh API, for the CLI and tests."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from execmesh.errors import ExecmeshError

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "timed_out", "cancelled", "rejected"})


class ApiError(ExecmeshError):
    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title') or problem}")


@dataclass(frozen=True)
class ServerEvent:
    id: str
    event: str
    data: dict[str, Any]


class ApiClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> str:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer = self._call("POST", "/api/v1/executions", json=body, headers=headers)
        return str(answer["id"])

    def execution(self, execution_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/executions/{execution_id}")

    def cancel(self, execution_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/executions/{execution_id}/cancel")

    def list(self, **query: str) -> dict[str, Any]:
        return self._call("GET", "/api/v1/executions", params=query)

    def output(self, execution_id: str, stream: str) -> bytes:
        response = self.http.get(f"/api/v1/executions/{execution_id}/output/{stream}")
        _check(response)
        return response.content

    def events(self, execution_id: str, last_event_id: str | None = None) -> Iterator[ServerEvent]:
        """The execution's lifecycle as it happens; ends after the terminal event."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        url = f"/api/v1/executions/{execution_id}/events"
        with self.http.stream("GET", url, headers=headers, timeout=None) as response:
            if response.is_error:
                response.read()
                _check(response)
            yield from parse_sse(response.iter_lines())

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        _check(response)
        body: dict[str, Any] = response.json()
        return body


def parse_sse(lines: Iterator[str]) -> Iterator[ServerEvent]:
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield ServerEvent(
                    fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:500]}
    raise ApiError(response.status_code, problem if isinstance(problem, dict) else {})
