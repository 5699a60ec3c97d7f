"""The saga and the result_processor wired by their own Trigger files, behind the local broker.

Real Kafka, FerretDB and Redis. The manifests are ``eventing/triggers/saga.yaml`` and
``result-processor.yaml`` as they are, moved to a namespace of this run's own (so topics and
consumer groups are too); a recording sink stands in for the rest of the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pymongo import MongoClient

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionSpec,
    Limits,
    Payload,
    PingTick,
    PodCreated,
    PodDeleted,
    PodRunning,
    Priority,
)
from execmesh.saga import MongoSagaStore, Phase
from execmesh.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent
PORTS = range(19800, 19900)
WATCHED = (
    "io.execmesh.pod.create_requested",
    "io.execmesh.pod.delete_requested",
    "io.execmesh.saga.completed",
    "io.execmesh.saga.compensated",
    "io.execmesh.result.stored",
    "io.execmesh.execution.cancelled",
    "io.execmesh.execution.timed_out",
    "io.execmesh.execution.failed",
)


@dataclass
class Recorder:
    url: str
    received: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def wait_for(self, expected: set[tuple[str, str]], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not expected <= self.kinds() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert expected <= self.kinds(), f"missing {expected - self.kinds()}"

    def kinds(self) -> set[tuple[str, str]]:
        return {(t.removeprefix("io.execmesh."), s) for t, s, _ in list(self.received)}

    def of(self, execution_id: str) -> list[str]:
        return [t.removeprefix("io.execmesh.") for t, s, _ in self.received if s == execution_id]


@dataclass(frozen=True)
class Mesh:
    ingress: str
    sink: Recorder
    dead_letters: Recorder
    database: str


def free_ports(count: int) -> list[int]:
    ports = []
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"not {count} free ports in {PORTS}")


def recorder(port: int, stop: list[ThreadingHTTPServer]) -> Recorder:
    record = Recorder(f"http://127.0.0.1:{port}/")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ce_type, subject = self.headers.get("ce-type", ""), self.headers.get("ce-subject", "")
            record.received.append((ce_type, subject, json.loads(body or b"{}")))
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.append(server)
    return record


def manifests(namespace: str, sink_url: str) -> str:
    """Our two Trigger files in ``namespace``, plus the Broker and a Trigger to the sink."""
    ours = [
        (PROJECT_ROOT / "eventing" / "triggers" / name).read_text()
        for name in ("saga.yaml", "result-processor.yaml")
    ]
    broker = f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: default, namespace: {namespace}}}
    """
    watch = [
        f"""
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: watch-{index}, namespace: {namespace}}}
        spec:
          broker: default
          filter: {{attributes: {{type: {ce_type}}}}}
          subscriber: {{uri: "{sink_url}"}}
        """
        for index, ce_type in enumerate(WATCHED)
    ]
    documents = [text.replace("namespace: execmesh", f"namespace: {namespace}") for text in ours]
    documents += [textwrap.dedent(text) for text in (broker, *watch)]
    return "\n---\n".join(documents)


def start(argv: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(process)
    pytest.fail(f"{argv[:3]} not ready: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("saga-mesh")
    eventing = tmp / "eventing"
    run = uuid.uuid4().hex[:8]
    namespace, database = f"sagatest-{run}", f"test_saga_mesh_{run}"
    broker_port, saga_port, results_port, sink_port, dlq_port = free_ports(5)
    servers: list[ThreadingHTTPServer] = []
    processes: list[subprocess.Popen[bytes]] = []
    settings = Settings.from_env()
    try:
        sink, dead_letters = recorder(sink_port, servers), recorder(dlq_port, servers)
        eventing.mkdir()
        (eventing / "mesh.yaml").write_text(manifests(namespace, sink.url))
        local = tmp / "local.yaml"
        local.write_text(
            f"namespace: {namespace}\n"
            f"broker: {{name: default, port: {broker_port}}}\n"
            f"node: {{port: {PORTS[-1]}}}\n"
            "services:\n"
            f"  saga: {{port: {saga_port}}}\n"
            f"  result-processor: {{port: {results_port}}}\n"
            f"  dlq: {{port: {dlq_port}}}\n"
        )
        ingress = f"http://127.0.0.1:{broker_port}/{namespace}/default"
        env = {
            "K_SINK": ingress,
            "MONGODB_DATABASE": database,
            "SAGA_GRACE_SECONDS": "0.5",
            "SAGA_STARTUP_SECONDS": "3",
            "WORKERS": "1",
            "THREADS": "4",
        }
        for name, port in (("saga", saga_port), ("result_processor", results_port)):
            argv = [str(BIN / "functions-framework"), "--target", name, "--source"]
            argv += [str(PROJECT_ROOT / "functions" / name / "main.py"), "--host", "127.0.0.1"]
            argv += ["--port", str(port)]
            url = f"http://127.0.0.1:{port}/health/readiness"
            processes.append(start(argv, env, tmp / f"{name}.log", url))
        argv = [str(BIN / "execmesh"), "broker", "--eventing-dir", str(eventing)]
        argv += ["--local-config", str(local), "--port", str(broker_port)]
        ready = f"http://127.0.0.1:{broker_port}/health/readiness"
        processes.append(start(argv, {}, tmp / "broker.log", ready))
        yield Mesh(ingress, sink, dead_letters, database)
    finally:
        for process in reversed(processes):
            stop(process)
        for server in servers:
            server.shutdown()
            server.server_close()
        forget(settings, eventing, namespace, database)


def forget(settings: Settings, eventing: Path, namespace: str, database: str) -> None:
    documents = yaml.safe_load_all((eventing / "mesh.yaml").read_text())
    triggers = [d["metadata"]["name"] for d in documents if d and d["kind"] == "Trigger"]
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        with contextlib.suppress(KafkaError):
            admin.delete_groups([f"knative-trigger-{namespace}-{name}" for name in triggers])
        with contextlib.suppress(KafkaError):
            admin.delete_topics([f"knative-broker-{namespace}-default"])
    finally:
        admin.close()
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongodb_url)
    client.drop_database(database)
    client.close()


def post(mesh: Mesh, payload: Payload, at: datetime | None = None) -> None:
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": f"test-{uuid.uuid4()}",
        "ce-source": "/test",
        "ce-type": payload.TYPE,
        "ce-time": (at or datetime.now(UTC)).isoformat(),
    }
    execution_id = getattr(payload, "execution_id", None)
    if execution_id:
        headers |= {"ce-subject": execution_id, "ce-partitionkey": execution_id}
    body = json.dumps(payload.to_data())
    assert httpx.post(mesh.ingress, headers=headers, content=body, timeout=10).status_code == 202


def accepted(execution_id: str, timeout: float = 30) -> ExecutionAccepted:
    return ExecutionAccepted(
        execution_id=execution_id,
        user_id="alice",
        spec=ExecutionSpec(language="python", version="3.11", script="print(1)"),
        limits=Limits(timeout_seconds=timeout, memory_mb=64, cpu_millis=200, output_bytes=4096),
        priority=Priority.NORMAL,
        lease_expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )


def execution(mesh: Mesh, execution_id: str) -> dict[str, Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(Settings.from_env().mongodb_url)
    try:
        document = client[mesh.database]["executions"].find_one({"_id": execution_id})
    finally:
        client.close()
    assert document is not None
    return document


def test_a_run_to_its_end_is_completed_stored_and_cleaned_up(mesh: Mesh) -> None:
    name = f"ok-{uuid.uuid4().hex[:6]}"
    post(mesh, accepted(name))
    mesh.sink.wait_for({("pod.create_requested", name)})
    post(mesh, PodCreated(execution_id=name, namespace="execmesh", pod_name=f"exec-{name}"))
    post(mesh, PodRunning(execution_id=name, pod_name=f"exec-{name}"))
    post(mesh, ExecutionCompleted(execution_id=name, exit_code=0))
    mesh.sink.wait_for(
        {("saga.completed", name), ("result.stored", name), ("pod.delete_requested", name)}
    )
    document = execution(mesh, name)
    assert (document["status"], document["result"]["exit_code"]) == ("completed", 0)
    assert mesh.dead_letters.received == []


def test_a_cancel_while_running_deletes_the_pod_and_the_result_says_cancelled(
    mesh: Mesh,
) -> None:
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    post(mesh, accepted(name))
    post(mesh, PodRunning(execution_id=name, pod_name=f"exec-{name}"))
    mesh.sink.wait_for({("pod.create_requested", name)})
    time.sleep(0.5)  # let pod.running reach the saga first; the order is not guaranteed
    post(mesh, ExecutionCancelRequested(execution_id=name, reason="stop"))
    mesh.sink.wait_for({("pod.delete_requested", name)})
    post(mesh, PodDeleted(execution_id=name, namespace="execmesh", pod_name=f"exec-{name}"))
    mesh.sink.wait_for(
        {("execution.cancelled", name), ("saga.compensated", name), ("result.stored", name)}
    )
    document = execution(mesh, name)
    assert (document["status"], document["result"]["message"]) == ("cancelled", "stop")
    assert mesh.dead_letters.received == []


def wait_for_phase(mesh: Mesh, execution_id: str, phase: Phase, timeout: float = 30) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(Settings.from_env().mongodb_url)
    try:
        store = MongoSagaStore(client[mesh.database])
        deadline = time.monotonic() + timeout
        while (saga := store.get(execution_id)) is None or saga.phase is not phase:
            assert time.monotonic() < deadline, f"{execution_id} never reached {phase}: {saga}"
            time.sleep(0.05)
    finally:
        client.close()


def test_a_silent_run_is_timed_out_on_the_ping_and_stored_as_timed_out(mesh: Mesh) -> None:
    name = f"quiet-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    post(mesh, accepted(name, timeout=1), at=now)
    mesh.sink.wait_for({("pod.create_requested", name)})
    post(mesh, PodRunning(execution_id=name, pod_name=f"exec-{name}"), at=now)
    wait_for_phase(mesh, name, Phase.RUNNING)
    # Start + timeout + grace have passed, the start-up budget has not.
    post(mesh, PingTick(), at=now + timedelta(seconds=2))
    mesh.sink.wait_for(
        {
            ("execution.timed_out", name),
            ("saga.compensated", name),
            ("result.stored", name),
        }
    )
    assert execution(mesh, name)["status"] == "timed_out"
    assert mesh.sink.of(name).count("result.stored") == 1
    assert mesh.dead_letters.received == []


def test_a_pod_that_never_runs_is_failed_on_the_ping_after_the_start_up_budget(
    mesh: Mesh,
) -> None:
    name = f"stuck-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    post(mesh, accepted(name, timeout=1), at=now)
    mesh.sink.wait_for({("pod.create_requested", name)})
    post(mesh, PingTick(), at=now + timedelta(seconds=4))
    mesh.sink.wait_for(
        {
            ("execution.failed", name),
            ("pod.delete_requested", name),
            ("saga.compensated", name),
            ("result.stored", name),
        }
    )
    assert "execution.timed_out" not in mesh.sink.of(name)
    document = execution(mesh, name)
    assert (document["status"], document["result"]["error_type"]) == ("failed", "startup_timeout")
    assert mesh.dead_letters.received == []
