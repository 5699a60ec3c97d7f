"""The k8s_worker function as it is deployed: functions-framework, the contract, a real node."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from kube_harness import (
    Node,
    Sink,
    a_request,
    local_config_for,
    needs_sandbox,
    running_sink,
    start_node,
)

from execmesh.events import (
    ExecutionFailed,
    Payload,
    PodCreated,
    PodDeleted,
    PodDeleteRequested,
)
from execmesh.mesh import derive_event_id
from tests.support.cloudevents import binary_headers
from tests.support.functions import function_main, serving_function

pytestmark = [pytest.mark.node, pytest.mark.services, needs_sandbox]

PORT = 19910


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from start_node(19904, tmp_path_factory)


@pytest.fixture(scope="module")
def module_sink() -> Iterator[Sink]:
    with running_sink() as recorded:
        yield recorded


@pytest.fixture
def sink(module_sink: Sink) -> Sink:
    # Every test uses its own execution ids, so the one server's record can be shared.
    return module_sink


@pytest.fixture(scope="module")
def function_url(
    node: Node, module_sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("k8s-worker")
    env = {
        "K_SINK": module_sink.url,
        "EXECMESH_POD_BACKEND": "local",
        "EXECMESH_LOCAL_CONFIG": str(local_config_for(node, tmp_path)),
    }
    source = function_main("k8s_worker")
    with serving_function("k8s_worker", source, PORT, env, tmp_path / "k8s-worker.log") as url:
        yield url


def post(url: str, payload: Payload, event_id: str) -> httpx.Response:
    headers = binary_headers(payload.TYPE, event_id, "/execmesh/saga")
    return httpx.post(url, headers=headers, content=payload.model_dump_json(), timeout=30)


def test_a_create_request_is_answered_202_and_pod_created_reaches_the_sink(
    function_url: str, sink: Sink
) -> None:
    request = a_request("print(1)")
    event_id = f"evt-{uuid.uuid4()}"
    response = post(function_url, request, event_id)
    assert (response.status_code, response.content) == (202, b"")
    [event] = sink.of(request.execution_id)
    assert event.type == PodCreated.TYPE
    assert event.id == derive_event_id(
        f"/execmesh/saga\n{event_id}", PodCreated.TYPE, subject=request.execution_id
    )
    assert event.data["pod_name"] == f"exec-{request.execution_id}"


def test_a_create_redelivered_under_a_new_id_still_answers_pod_created(
    function_url: str, sink: Sink
) -> None:
    request = a_request("print(1)")
    for _ in range(2):
        assert post(function_url, request, f"evt-{uuid.uuid4()}").status_code == 202
    assert [e.type for e in sink.of(request.execution_id)] == [PodCreated.TYPE] * 2


def test_an_unknown_runtime_is_answered_202_with_execution_failed(
    function_url: str, sink: Sink
) -> None:
    request = a_request("print 1", language="brainfuck")
    assert post(function_url, request, f"evt-{uuid.uuid4()}").status_code == 202
    [event] = sink.of(request.execution_id)
    assert event.type == ExecutionFailed.TYPE
    assert event.data["error_type"] == "image"


def test_a_delete_request_is_answered_with_pod_deleted(function_url: str, sink: Sink) -> None:
    request = a_request("import time\ntime.sleep(30)")
    assert post(function_url, request, f"evt-{uuid.uuid4()}").status_code == 202
    delete = PodDeleteRequested(execution_id=request.execution_id, reason="cancelled")
    assert post(function_url, delete, f"evt-{uuid.uuid4()}").status_code == 202
    assert [e.type for e in sink.of(request.execution_id)] == [PodCreated.TYPE, PodDeleted.TYPE]


def test_an_event_the_worker_does_not_handle_is_refused_with_400(
    function_url: str, sink: Sink
) -> None:
    created = PodCreated(execution_id="e-x", namespace="execmesh", pod_name="exec-e-x")
    assert post(function_url, created, f"evt-{uuid.uuid4()}").status_code == 400
    assert sink.of("e-x") == []
