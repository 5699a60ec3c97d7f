"""The coordinator function of functions/coordinator/main.py, served in-process for tests.

Shared by the tests of the function against the in-memory store and the Redis store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.testclient import TestClient

from execmesh.admission import AdmissionStore, Coordinator, ServerLimits
from execmesh.events import ExecutionRequested, ExecutionSpec, Limits, Payload, Priority
from execmesh.mesh import (
    InMemoryIdempotencyStore,
    OutgoingEvent,
    RecordingSender,
    Runtime,
    asgi_app,
    cloud_event_function,
)
from execmesh.mesh.idempotency import IdempotencyStore
from execmesh.pods.runtimes import RuntimeRegistry, cluster_runtimes
from execmesh.settings import Settings
from tests.support.cloudevents import binary_headers
from tests.support.functions import function_main, load_function

MAIN = function_main("coordinator")
REGISTRY = RuntimeRegistry({"cluster": cluster_runtimes(), "local": ()})
START = 1_800_000_000.0
LEASE_SECONDS = 60.0
SERVER = ServerLimits(max_timeout_seconds=120, max_memory_mb=1024, max_cpu_millis=2000)


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """The function with a store, a clock and a recording sender; ``post`` sends one event."""

    store: AdmissionStore
    clock: Clock = field(default_factory=Clock)
    sender: RecordingSender = field(default_factory=RecordingSender)
    idempotency: IdempotencyStore = field(default_factory=InMemoryIdempotencyStore)

    def __post_init__(self) -> None:
        self.coordinator = Coordinator(
            store=self.store,
            server=SERVER,
            resolve=lambda language, version: REGISTRY.resolve(language, version, "cluster"),
            lease_seconds=LEASE_SECONDS,
            clock=self.clock,
        )
        self.client = self._client(self.idempotency)

    def _client(self, idempotency: IdempotencyStore) -> TestClient:
        runtime = Runtime(Settings(), self.coordinator, idempotency, self.sender)
        view = cloud_event_function(
            "coordinator", load_function("coordinator").on_event, runtime=runtime
        )
        return TestClient(asgi_app(view))

    def restarted(self) -> Harness:
        """The same state and sink, but a process that lost its idempotency markers."""
        self.client = self._client(InMemoryIdempotencyStore())
        return self

    def post(self, payload: Payload, event_id: str, source: str = "/test") -> int:
        return self.post_raw(payload.TYPE, payload.to_data(), event_id, source)

    def post_raw(self, ce_type: str, data: Any, event_id: str, source: str = "/test") -> int:
        headers = binary_headers(ce_type, event_id, source)
        response = self.client.post("/", headers=headers, content=json.dumps(data))
        return response.status_code

    def of_type(self, payload_type: type[Payload]) -> list[OutgoingEvent]:
        return self.sender.of_type(payload_type.TYPE)

    def take(self) -> list[tuple[str, str]]:
        """(short type, execution id) of what was sent since the last take, then forget it."""
        sent = [
            (e.type.rsplit(".", 1)[1], str(e.data.get("execution_id"))) for e in self.sender.sent
        ]
        self.sender.sent.clear()
        return sent


def requested(
    execution_id: str,
    user: str = "alice",
    priority: Priority = Priority.NORMAL,
    limits: Limits | None = None,
    language: str = "python",
    version: str = "3.11",
) -> ExecutionRequested:
    return ExecutionRequested(
        execution_id=execution_id,
        user_id=user,
        spec=ExecutionSpec(language=language, version=version, script="print(1)"),
        limits=limits,
        priority=priority,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
