from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from functions_framework import _function_registry
from starlette.testclient import TestClient

from execmesh.errors import PermanentError, TransientError
from execmesh.events import (
    ExecutionCancelled,
    ExecutionCancelRequested,
    PodDeleteRequested,
)
from execmesh.mesh import (
    CloudEventFunction,
    Context,
    Emission,
    IncomingEvent,
    InMemoryIdempotencyStore,
    OutgoingEvent,
    RecordingSender,
    Runtime,
    asgi_app,
    build_runtime,
    cloud_event_function,
    derive_event_id,
)
from execmesh.mesh.idempotency import DEFAULT_TTL
from execmesh.settings import Settings

CANCEL = ExecutionCancelRequested(execution_id="ex-1", reason="changed my mind")


def binary(event_id: str = "evt-1", data: object = None, **headers: str) -> dict[str, object]:
    all_headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/execmesh/api",
        "ce-type": CANCEL.TYPE,
        "ce-subject": "ex-1",
        "ce-partitionkey": "ex-1",
        **headers,
    }
    body = json.dumps(CANCEL.to_data() if data is None else data)
    return {"headers": all_headers, "content": body}


def structured(event_id: str = "evt-1") -> dict[str, object]:
    document = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/execmesh/api",
        "type": CANCEL.TYPE,
        "subject": "ex-1",
        "datacontenttype": "application/json",
        "data": CANCEL.to_data(),
    }
    return {
        "headers": {"content-type": "application/cloudevents+json"},
        "content": json.dumps(document),
    }


@dataclass
class Echo:
    """Answers a cancel request with cancelled + pod deletion; can be told to fail."""

    raises: Exception | None = None
    calls: list[IncomingEvent] = field(default_factory=list)

    def __call__(self, event: IncomingEvent, ctx: Context[None]) -> list[Emission]:
        self.calls.append(event)
        if self.raises is not None:
            raise self.raises
        ctx.emit(PodDeleteRequested(execution_id="ex-1", reason="cancelled"))
        return [Emission(ExecutionCancelled(execution_id="ex-1", reason="by user"))]


class FlakySender(RecordingSender):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, event: OutgoingEvent) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise TransientError("sink down")
        super().send(event)


class UnreachableStore(InMemoryIdempotencyStore):
    def is_processed(self, key: str) -> bool:
        raise TransientError("redis down")

    def mark_processed(self, key: str, ttl: timedelta = DEFAULT_TTL) -> None:
        raise TransientError("redis down")

    def ping(self) -> None:
        raise TransientError("redis down")


@dataclass
class Mesh:
    handler: Echo
    store: InMemoryIdempotencyStore
    sender: RecordingSender
    client: TestClient


def make_mesh(
    handler: Echo | None = None,
    *,
    sender: RecordingSender | None = None,
    store: InMemoryIdempotencyStore | None = None,
    overrides: dict[str, str] | None = None,
    open_types: bool = False,
) -> Mesh:
    handler = handler or Echo()
    store = store if store is not None else InMemoryIdempotencyStore()
    sender = sender if sender is not None else RecordingSender()
    runtime = Runtime(Settings(), None, store, sender, overrides or {})
    view = cloud_event_function("echo", handler, runtime=runtime, open_types=open_types)
    return Mesh(handler, store, sender, TestClient(asgi_app(view)))


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    yield make_mesh()


def test_a_binary_event_is_handled_and_answered_202_with_an_empty_body(mesh: Mesh) -> None:
    response = mesh.client.post("/", **binary())

    assert response.status_code == 202
    assert response.content == b""
    assert "Content-Type" not in response.headers
    assert [event.id for event in mesh.handler.calls] == ["evt-1"]
    assert mesh.handler.calls[0].payload == CANCEL


def test_a_structured_event_is_handled_the_same_way(mesh: Mesh) -> None:
    response = mesh.client.post("/", **structured())

    assert (response.status_code, response.content) == (202, b"")
    assert mesh.handler.calls[0].payload == CANCEL


def test_emissions_from_ctx_emit_and_from_the_return_value_are_both_sent(mesh: Mesh) -> None:
    mesh.client.post("/", **binary())

    assert [event.type for event in mesh.sender.sent] == [
        PodDeleteRequested.TYPE,
        ExecutionCancelled.TYPE,
    ]
    cancelled = mesh.sender.sent[1]
    assert cancelled.source == "/execmesh/echo"
    assert (cancelled.subject, cancelled.partition_key) == ("ex-1", "ex-1")
    assert cancelled.id == derive_event_id(
        "/execmesh/api\nevt-1", ExecutionCancelled.TYPE, subject="ex-1"
    )


@pytest.mark.parametrize(
    "request_kwargs",
    [
        binary(**{"ce-id": ""}),
        binary(**{"ce-specversion": "0.2"}),
        {"headers": binary()["headers"], "data": "{broken"},
        binary(**{"content-type": "text/plain"}),
        {"headers": {"content-type": "application/cloudevents+json"}, "data": "{broken"},
        {"headers": {"content-type": "application/cloudevents+json"}, "data": "{}"},
        {"headers": {}, "data": ""},
        binary(**{"ce-type": "io.execmesh.unknown.thing"}),
        binary(data={"execution_id": "ex-1", "unexpected": 1}),
    ],
)
def test_an_event_that_can_never_succeed_is_answered_400_without_running_the_handler(
    mesh: Mesh, request_kwargs: dict[str, object]
) -> None:
    response = mesh.client.post("/", **request_kwargs)

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 400
    assert mesh.handler.calls == []


def test_an_unknown_schema_version_is_answered_422(mesh: Mesh) -> None:
    response = mesh.client.post("/", **binary(data={**CANCEL.to_data(), "schema_version": 7}))

    assert response.status_code == 422
    assert mesh.handler.calls == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (PermanentError("cannot ever work"), 400),
        (TransientError("mongo down"), 503),
        (RuntimeError("bug"), 500),
        (KeyError("bug"), 500),
    ],
)
def test_a_failing_handler_maps_to_its_status_and_leaves_no_marker_or_emission(
    error: Exception, status: int
) -> None:
    mesh = make_mesh(Echo(raises=error))

    response = mesh.client.post("/", **binary())

    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    assert mesh.sender.sent == []
    assert not mesh.store.is_processed("execmesh:processed:echo:/execmesh/api:evt-1")


def test_a_failed_emission_is_503_and_the_redelivery_runs_again_with_the_same_ids() -> None:
    mesh = make_mesh(sender=FlakySender(failures=1))

    first = mesh.client.post("/", **binary())
    assert first.status_code == 503
    assert not mesh.store.is_processed("execmesh:processed:echo:/execmesh/api:evt-1")

    second = mesh.client.post("/", **binary())
    assert second.status_code == 202
    assert len(mesh.handler.calls) == 2
    assert [e.id for e in mesh.sender.sent] == [
        derive_event_id("/execmesh/api\nevt-1", PodDeleteRequested.TYPE, subject="ex-1"),
        derive_event_id("/execmesh/api\nevt-1", ExecutionCancelled.TYPE, subject="ex-1"),
    ]


def test_a_duplicate_delivery_is_acknowledged_without_running_the_handler_again(
    mesh: Mesh,
) -> None:
    answers = [mesh.client.post("/", **binary()).status_code for _ in range(3)]

    assert answers == [202, 202, 202]
    assert len(mesh.handler.calls) == 1
    assert len(mesh.sender.sent) == 2


def test_a_function_without_markers_runs_its_handler_for_every_delivery() -> None:
    handler = Echo()
    store = UnreachableStore()  # never asked: a Redis outage does not stop the function
    runtime = Runtime(Settings(), None, store, RecordingSender())
    view = cloud_event_function("recorder", handler, runtime=runtime, markers=False)
    client = TestClient(asgi_app(view))

    answers = [client.post("/", **binary()).status_code for _ in range(2)]

    assert answers == [202, 202]
    assert len(handler.calls) == 2


def test_a_duplicate_in_the_other_content_mode_is_still_a_duplicate(mesh: Mesh) -> None:
    mesh.client.post("/", **binary())
    mesh.client.post("/", **structured())

    assert len(mesh.handler.calls) == 1


def test_the_same_id_from_another_source_is_a_different_event(mesh: Mesh) -> None:
    mesh.client.post("/", **binary())
    mesh.client.post("/", **binary(**{"ce-source": "/execmesh/replay"}))

    assert len(mesh.handler.calls) == 2
    assert len({event.id for event in mesh.sender.sent}) == 4


def test_a_marker_expires_after_its_ttl() -> None:
    now = [0.0]
    store = InMemoryIdempotencyStore(clock=lambda: now[0])
    handler = Echo()
    runtime = Runtime(Settings(), None, store, RecordingSender())
    view = cloud_event_function(
        "echo", handler, runtime=runtime, idempotency_ttl=timedelta(hours=1)
    )
    client = TestClient(asgi_app(view))

    client.post("/", **binary())
    now[0] = 3599.0
    client.post("/", **binary())
    now[0] = 3601.0
    client.post("/", **binary())

    assert len(handler.calls) == 2


def test_ids_are_deterministic_across_processes() -> None:
    first, second = make_mesh(), make_mesh()

    first.client.post("/", **binary())
    second.client.post("/", **binary())

    assert [e.id for e in first.sender.sent] == [e.id for e in second.sender.sent]


def test_another_input_event_gives_other_ids(mesh: Mesh) -> None:
    mesh.client.post("/", **binary("evt-1"))
    mesh.client.post("/", **binary("evt-2"))

    assert len({event.id for event in mesh.sender.sent}) == 4


def test_two_emissions_of_one_type_need_distinct_discriminators() -> None:
    def twice(event: IncomingEvent, ctx: Context[None]) -> list[Emission]:
        reason = ExecutionCancelled(execution_id="ex-1", reason="x")
        return [Emission(reason), Emission(reason)]

    def twice_told_apart(event: IncomingEvent, ctx: Context[None]) -> list[Emission]:
        reason = ExecutionCancelled(execution_id="ex-1", reason="x")
        return [Emission(reason, discriminator="a"), Emission(reason, discriminator="b")]

    sender = RecordingSender()
    runtime = Runtime(Settings(), None, InMemoryIdempotencyStore(), sender)
    clash = TestClient(asgi_app(cloud_event_function("echo", twice, runtime=runtime)))
    apart = asgi_app(cloud_event_function("echo", twice_told_apart, runtime=runtime))

    assert clash.post("/", **binary("evt-1")).status_code == 500
    assert TestClient(apart).post("/", **binary("evt-2")).status_code == 202
    assert len({event.id for event in sender.sent}) == 2


def test_ce_overrides_are_applied_to_every_emitted_event() -> None:
    mesh = make_mesh(overrides={"boundby": "sinkbinding", "partitionkey": "forced"})

    mesh.client.post("/", **binary())

    assert all(e.extensions["boundby"] == "sinkbinding" for e in mesh.sender.sent)
    assert all(e.partition_key == "forced" for e in mesh.sender.sent)


def test_the_production_runtime_reads_sink_and_overrides_from_settings() -> None:
    settings = Settings(
        k_sink="http://127.0.0.1:19599/", k_ce_overrides='{"extensions": {"a": "b"}}'
    )

    runtime = build_runtime(settings, lambda s: s.k_sink)

    assert runtime.deps == "http://127.0.0.1:19599/"
    assert runtime.overrides == {"a": "b"}


def test_emitting_without_a_sink_is_a_500_not_a_silent_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("K_SINK", raising=False)
    runtime = build_runtime(Settings(), lambda s: None)
    store = InMemoryIdempotencyStore()
    view = cloud_event_function(
        "echo", Echo(), runtime=Runtime(runtime.settings, None, store, runtime.sender)
    )

    assert TestClient(asgi_app(view)).post("/", **binary()).status_code == 500


def test_dependencies_are_started_once_and_reach_the_handler_as_ctx_deps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    started: list[Settings] = []
    seen: list[str] = []

    def start(settings: Settings) -> str:
        started.append(settings)
        return "the-deps"

    def handler(event: IncomingEvent, ctx: Context[str]) -> None:
        seen.append(ctx.deps)

    function = CloudEventFunction("echo", handler, start=start)
    function.runtime()
    function.runtime()

    assert len(started) == 1
    assert started[0].redis_url == "redis://127.0.0.1:1/0"
    assert seen == []


def test_the_store_being_down_is_503_and_the_handler_does_not_run() -> None:
    mesh = make_mesh(store=UnreachableStore())

    response = mesh.client.post("/", **binary())

    assert response.status_code == 503
    assert mesh.handler.calls == []


def test_a_replayed_event_passes_its_session_on_to_what_it_causes(mesh: Mesh) -> None:
    mesh.client.post("/", **binary(**{"ce-replaysession": "rs-1", "ce-replayedfrom": "evt-0"}))

    assert all(e.extensions["replaysession"] == "rs-1" for e in mesh.sender.sent)


@pytest.mark.parametrize("path", ["/health/liveness", "/health/readiness"])
def test_health_endpoints_answer_200(mesh: Mesh, path: str) -> None:
    response = mesh.client.get(path)

    assert response.status_code == 200
    assert mesh.handler.calls == []


def test_probes_answer_while_every_handler_thread_is_busy() -> None:
    release = threading.Event()
    running: list[str] = []
    most_at_once = 0

    def stuck(event: IncomingEvent, ctx: Context[None]) -> None:
        nonlocal most_at_once
        running.append(event.id)
        most_at_once = max(most_at_once, len(running))
        release.wait(10)
        running.remove(event.id)

    settings = Settings(handler_threads=2)
    runtime = Runtime(settings, None, InMemoryIdempotencyStore(), RecordingSender())
    app = asgi_app(cloud_event_function("stuck", stuck, runtime=runtime))

    async def scenario() -> tuple[int, int, list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stuck") as client:
            posts = [client.post("/", **binary(f"evt-{n}")) for n in range(3)]  # type: ignore[arg-type]
            busy = [asyncio.create_task(post) for post in posts]
            await asyncio.sleep(0.2)
            live = await asyncio.wait_for(client.get("/health/liveness"), 2)
            ready = await asyncio.wait_for(client.get("/health/readiness"), 2)
            release.set()
            answers = await asyncio.gather(*busy)
        return live.status_code, ready.status_code, [a.status_code for a in answers]

    assert asyncio.run(scenario()) == (200, 200, [202, 202, 202])
    assert most_at_once == 2


def test_readiness_is_503_while_the_store_is_unreachable() -> None:
    mesh = make_mesh(store=UnreachableStore())

    assert mesh.client.get("/health/liveness").status_code == 200
    assert mesh.client.get("/health/readiness").status_code == 503


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("PUT", "/"), ("DELETE", "/anything"), ("POST", "/health/liveness")],
)
def test_other_methods_are_405(mesh: Mesh, method: str, path: str) -> None:
    response = mesh.client.request(method, path)

    assert response.status_code == 405
    assert "Allow" in response.headers


def test_no_answer_is_ever_a_2xx_with_a_body(mesh: Mesh) -> None:
    answers = [
        mesh.client.post("/", **binary("a")),
        mesh.client.post("/", **binary("a")),
        mesh.client.post("/", **structured("b")),
    ]

    assert all(a.content == b"" for a in answers if 200 <= a.status_code < 300)


def test_the_view_is_registered_as_an_http_function_for_functions_framework(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry: dict[str, str] = {}
    monkeypatch.setattr(_function_registry, "REGISTRY_MAP", registry)
    monkeypatch.delenv("FUNCTION_TARGET", raising=False)

    view = cloud_event_function("k8s-worker", Echo(), runtime=in_memory_runtime())

    assert view.__name__ == "k8s_worker"
    assert registry == {"k8s_worker": "http"}


def test_the_target_functions_framework_loads_is_registered_as_http_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = {"tick": "cloudevent"}
    monkeypatch.setattr(_function_registry, "REGISTRY_MAP", registry)

    monkeypatch.setenv("FUNCTION_TARGET", "handle")
    cloud_event_function("saga", Echo(), runtime=in_memory_runtime())
    monkeypatch.setenv("FUNCTION_TARGET", "tick")
    cloud_event_function("saga", Echo(), runtime=in_memory_runtime())

    assert registry == {"saga": "http", "handle": "http", "tick": "cloudevent"}


def in_memory_runtime() -> Runtime[None]:
    return Runtime(Settings(), None, InMemoryIdempotencyStore(), RecordingSender())


def test_a_replayed_event_is_acknowledged_without_running_the_pipeline_again(mesh: Mesh) -> None:
    replayed = binary("evt-r", **{"ce-replayedfrom": "evt-1", "ce-replaysession": "s1"})

    response = mesh.client.post("/", **replayed)

    assert response.status_code == 202
    assert mesh.handler.calls == []
    assert mesh.sender.sent == []


def test_a_replay_that_asks_for_reprocessing_runs_and_marks_what_it_causes(mesh: Mesh) -> None:
    replayed = binary(
        "evt-r",
        **{"ce-replayedfrom": "evt-1", "ce-replaysession": "s1", "ce-replayreprocess": "true"},
    )

    assert mesh.client.post("/", **replayed).status_code == 202

    assert len(mesh.handler.calls) == 1
    assert {e.extensions["replaysession"] for e in mesh.sender.sent} == {"s1"}
    assert {e.extensions["replayreprocess"] for e in mesh.sender.sent} == {"true"}


def test_an_open_function_takes_unknown_types_invalid_payloads_and_text_as_they_are() -> None:
    mesh = make_mesh(open_types=True)
    unknown = binary("evt-u", data={"anything": 1}, **{"ce-type": "com.example.other"})
    invalid = binary("evt-i", data={"execution_id": "NOT VALID"})
    text = {
        "headers": {**binary("evt-t")["headers"], "content-type": "text/plain"},  # type: ignore[dict-item]
        "data": "not json",
    }

    for request in (unknown, invalid, text):
        assert mesh.client.post("/", **request).status_code == 202

    assert [e.payload.TYPE for e in mesh.handler.calls] == ["*", "*", "*"]
    assert [e.data for e in mesh.handler.calls] == [
        {"anything": 1},
        {"execution_id": "NOT VALID"},
        "not json",
    ]


def test_a_closed_function_refuses_what_an_open_one_takes(mesh: Mesh) -> None:
    unknown = binary("evt-u", data={"anything": 1}, **{"ce-type": "com.example.other"})

    assert mesh.client.post("/", **unknown).status_code == 400
