"""The worker and the monitor wired as in `make run`: the local Knative broker on Kafka between
them, the k8s_worker under functions-framework, the monitor emitting to the broker's ingress.
"""

from __future__ import annotations

import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from kube_harness import (
    Node,
    Received,
    Sink,
    a_request,
    local_config_for,
    needs_sandbox,
    running_sink,
    start_node,
    wait_until,
)

from execmesh.events import (
    ExecutionCompleted,
    ExecutionFailed,
    Payload,
    PodCreated,
    PodDeleted,
    PodDeleteRequested,
)
from execmesh.mongo import connect
from execmesh.results.outputs import MongoOutputStore
from execmesh.settings import Settings
from tests.support.cloudevents import binary_headers
from tests.support.functions import function_main, serving_function
from tests.support.knative import running_broker
from tests.support.processes import running_process

pytestmark = [pytest.mark.node, pytest.mark.services, needs_sandbox]

BROKER_PORT, WORKER_PORT = 19920, 19921
OUT_TYPES = (
    "io.execmesh.pod.created",
    "io.execmesh.pod.running",
    "io.execmesh.pod.deleted",
    "io.execmesh.execution.completed",
    "io.execmesh.execution.failed",
    "io.execmesh.execution.timed_out",
)
MANIFESTS = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {{name: {broker}, namespace: execmesh}}
    spec:
      delivery:
        retry: 3
        backoffPolicy: exponential
        backoffDelay: PT0.2S
        deadLetterSink: {{uri: "{dead_letters}"}}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {{name: {broker}-worker, namespace: execmesh}}
    spec:
      broker: {broker}
      filters:
        - any:
            - exact: {{type: io.execmesh.pod.create_requested}}
            - exact: {{type: io.execmesh.pod.delete_requested}}
      subscriber: {{uri: "http://127.0.0.1:{worker_port}/"}}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {{name: {broker}-out, namespace: execmesh}}
    spec:
      broker: {broker}
      filters:
        - any: [{out}]
      subscriber: {{uri: "{sink}"}}
"""


@dataclass(frozen=True)
class Mesh:
    ingress: str
    sink: Sink
    dead_letters: Sink


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from start_node(19905, tmp_path_factory)


@pytest.fixture(scope="module")
def mesh(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp_path = tmp_path_factory.mktemp("kube-mesh")
    broker = f"kubetest-{uuid.uuid4().hex[:8]}"
    ingress = f"http://127.0.0.1:{BROKER_PORT}/execmesh/{broker}"
    eventing = tmp_path / "eventing"
    eventing.mkdir()
    env = {
        "K_SINK": ingress,
        "EXECMESH_POD_BACKEND": "local",
        "EXECMESH_LOCAL_CONFIG": str(local_config_for(node, tmp_path)),
    }
    worker = function_main("k8s_worker")
    monitor = [sys.executable, str(function_main("pod_monitor"))]
    with running_sink() as sink, running_sink() as dead_letters:
        (eventing / "kube.yaml").write_text(
            textwrap.dedent(MANIFESTS).format(
                broker=broker,
                dead_letters=dead_letters.url,
                worker_port=WORKER_PORT,
                sink=sink.url,
                out=", ".join(f"{{exact: {{type: {t}}}}}" for t in OUT_TYPES),
            )
        )
        with (
            serving_function("k8s_worker", worker, WORKER_PORT, env, tmp_path / "k8s-worker.log"),
            running_process(monitor, env, tmp_path / "pod-monitor.log"),
            running_broker(eventing, BROKER_PORT, env, tmp_path / "broker.log"),
        ):
            yield Mesh(ingress, sink, dead_letters)


def submit(mesh: Mesh, payload: Payload) -> None:
    headers = binary_headers(payload.TYPE, f"evt-{uuid.uuid4()}", "/execmesh/saga")
    response = httpx.post(mesh.ingress, headers=headers, content=payload.model_dump_json())
    assert response.status_code == 202


def received(mesh: Mesh, execution_id: str, ce_type: str, timeout: float = 60) -> Received:
    def arrived() -> bool:
        return any(e.type == ce_type for e in mesh.sink.of(execution_id))

    wait_until(arrived, timeout, f"{ce_type} for {execution_id}")
    return next(e for e in mesh.sink.of(execution_id) if e.type == ce_type)


def test_a_pod_request_through_the_broker_comes_back_as_its_result(mesh: Mesh) -> None:
    ok = a_request("print('via the broker')")
    failing = a_request("import sys\nsys.exit(2)")
    unknown = a_request("?", language="cobol")
    for request in (ok, failing, unknown):
        submit(mesh, request)

    assert received(mesh, ok.execution_id, PodCreated.TYPE).source == "/execmesh/k8s-worker"
    completed = received(mesh, ok.execution_id, ExecutionCompleted.TYPE)
    assert completed.source == "/execmesh/pod-monitor"
    assert completed.subject == ok.execution_id
    assert (completed.data["exit_code"], completed.data["stdout"]["data"]) == (
        0,
        "via the broker\n",
    )
    assert received(mesh, failing.execution_id, ExecutionCompleted.TYPE).data["exit_code"] == 2
    failed = received(mesh, unknown.execution_id, ExecutionFailed.TYPE)
    assert failed.data["error_type"] == "image"
    time.sleep(0.5)  # a dead letter, if any, would have arrived by now
    assert mesh.dead_letters.events == []


def test_a_delete_through_the_broker_stops_a_running_program(mesh: Mesh) -> None:
    request = a_request("import time\nprint('started', flush=True)\ntime.sleep(60)")
    submit(mesh, request)
    received(mesh, request.execution_id, "io.execmesh.pod.running")
    submit(mesh, PodDeleteRequested(execution_id=request.execution_id, reason="cancelled"))
    received(mesh, request.execution_id, PodDeleted.TYPE)
    time.sleep(1)
    # The program was stopped by its deletion, not run to its end or reported as finished.
    types = {e.type for e in mesh.sink.of(request.execution_id)}
    assert ExecutionCompleted.TYPE not in types
    assert mesh.dead_letters.events == []


def test_large_output_is_stored_in_mongodb_and_the_event_carries_its_ref(mesh: Mesh) -> None:
    request = a_request("import sys\nsys.stdout.write('z' * 200_000)")
    submit(mesh, request)
    completed = received(mesh, request.execution_id, ExecutionCompleted.TYPE)
    stdout = completed.data["stdout"]
    assert (stdout["data"], stdout["size"]) == ("", 200_000)
    assert stdout["ref"] == f"{request.execution_id}/stdout"
    outputs = MongoOutputStore(connect(Settings.from_env()))
    assert outputs.load_output(stdout["ref"]) == b"z" * 200_000
