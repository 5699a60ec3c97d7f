"""The contract against the local Knative Kafka broker: broker -> function -> K_SINK=broker.

A function that answered ``200 OK`` with a body would be dead-lettered by the broker; ours
answers 202 with an empty body, so the broker counts the delivery done and carries the
function's emission on to the next trigger.
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from execmesh.events import ExecutionCancelled, ExecutionCancelRequested
from execmesh.mesh import derive_event_id
from execmesh.settings import Settings
from tests.support.cloudevents import binary_headers
from tests.support.knative import running_broker
from tests.support.ports import free_port

from .serving import Sink, running_function, running_sink

pytestmark = pytest.mark.services

NAMESPACE = "execmesh"
MANIFESTS = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {{name: {broker}, namespace: execmesh}}
    spec:
      delivery:
        retry: 2
        backoffPolicy: linear
        backoffDelay: PT0.1S
        timeout: PT10S
        deadLetterSink: {{uri: "{dead_letters}"}}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {{name: {broker}-echo, namespace: execmesh}}
    spec:
      broker: {broker}
      filter: {{attributes: {{type: {requested}}}}}
      subscriber: {{uri: "{function}"}}
    ---
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {{name: {broker}-out, namespace: execmesh}}
    spec:
      broker: {broker}
      filter: {{attributes: {{type: {emitted}}}}}
      subscriber: {{uri: "{sink}"}}
"""


@dataclass(frozen=True)
class Mesh:
    ingress: str
    sink: Sink
    dead_letters: Sink


@pytest.fixture(scope="module")
def module_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp_path = tmp_path_factory.mktemp("mesh")
    broker = f"meshtest-{uuid.uuid4().hex[:8]}"
    broker_port, function_port = free_port(), free_port()
    ingress = f"http://127.0.0.1:{broker_port}/{NAMESPACE}/{broker}"
    settings = Settings.from_env()
    eventing = tmp_path / "eventing"
    eventing.mkdir()
    with running_sink() as sink, running_sink() as dead_letters:
        (eventing / "mesh.yaml").write_text(
            textwrap.dedent(MANIFESTS).format(
                broker=broker,
                dead_letters=dead_letters.url,
                function=f"http://127.0.0.1:{function_port}/",
                sink=sink.url,
                requested=ExecutionCancelRequested.TYPE,
                emitted=ExecutionCancelled.TYPE,
            )
        )
        function_env = {"K_SINK": ingress, "REDIS_URL": settings.redis_url}
        with (
            running_function("echo", tmp_path, function_env, port=function_port),
            running_broker(eventing, broker_port, {}, tmp_path / "broker.log"),
        ):
            yield Mesh(ingress, sink, dead_letters)


@pytest.fixture
def mesh(module_mesh: Mesh) -> Mesh:
    for sink in (module_mesh.sink, module_mesh.dead_letters):
        sink.received.clear()
    return module_mesh


def post_to_broker(ingress: str, event_id: str) -> httpx.Response:
    payload = ExecutionCancelRequested(execution_id="ex-broker", reason="test")
    headers = binary_headers(
        payload.TYPE, event_id, "/execmesh/api", subject="ex-broker", partitionkey="ex-broker"
    )
    return httpx.post(ingress, headers=headers, content=json.dumps(payload.to_data()), timeout=10)


def test_a_function_behind_the_broker_is_acked_and_its_emission_routed_on(mesh: Mesh) -> None:
    event_id = f"evt-{uuid.uuid4()}"

    assert post_to_broker(mesh.ingress, event_id).status_code == 202
    ((headers, body),) = mesh.sink.wait_for(1)
    time.sleep(1.0)  # a dead letter, if any, would arrive about now

    assert headers["ce-type"] == ExecutionCancelled.TYPE
    assert headers["ce-source"] == "/execmesh/echo"
    assert headers["ce-id"] == derive_event_id(
        f"/execmesh/api\n{event_id}", ExecutionCancelled.TYPE, subject="ex-broker"
    )
    assert json.loads(body)["execution_id"] == "ex-broker"
    assert mesh.dead_letters.received == []
    assert len(mesh.sink.received) == 1


def test_an_event_sent_twice_through_the_broker_is_emitted_once(mesh: Mesh) -> None:
    event_id = f"evt-{uuid.uuid4()}"

    answers = [post_to_broker(mesh.ingress, event_id).status_code for _ in range(2)]
    mesh.sink.wait_for(1)
    time.sleep(1.5)

    assert answers == [202, 202]
    assert len(mesh.sink.received) == 1
    assert mesh.dead_letters.received == []
