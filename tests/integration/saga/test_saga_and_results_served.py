"""functions/saga and functions/result_processor served by the real functions-framework CLI,
on the real FerretDB and Redis, emitting to a local sink."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.database import Database

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCompleted,
    ExecutionSpec,
    Limits,
    Payload,
    PingTick,
    PodRunning,
    Priority,
)
from execmesh.settings import PROJECT_ROOT

pytestmark = pytest.mark.services

PORTS = range(19800, 19900)
Received = list[dict[str, str]]


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


@pytest.fixture
def sink() -> Iterator[tuple[str, Received]]:
    received: Received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            received.append({**headers, "body": body.decode()})
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def serve(
    sink: tuple[str, Received], mongo_database: Database[dict[str, Any]], tmp_path: Path
) -> Iterator[Callable[[str], str]]:
    """Starts ``functions/<name>/main.py`` under functions-framework; returns its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> str:
        port = free_port()
        env = {
            **os.environ,
            "K_SINK": sink[0],
            "MONGODB_DATABASE": mongo_database.name,
            "SAGA_GRACE_SECONDS": "1",
        }
        argv = [str(Path(sys.executable).parent / "functions-framework"), "--target", name]
        source = PROJECT_ROOT / "functions" / name / "main.py"
        argv += ["--source", str(source), "--host", "127.0.0.1", "--port", str(port)]
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health/readiness", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"{name} did not become ready"
            time.sleep(0.1)

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def post(url: str, payload: Payload, event_id: str, at: datetime | None = None) -> int:
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/test",
        "ce-type": payload.TYPE,
    }
    if at is not None:
        headers["ce-time"] = at.isoformat()
    return httpx.post(url, headers=headers, content=json.dumps(payload.to_data())).status_code


def accepted(execution_id: str) -> ExecutionAccepted:
    return ExecutionAccepted(
        execution_id=execution_id,
        user_id="alice",
        spec=ExecutionSpec(language="python", version="3.11", script="print(1)"),
        limits=Limits(timeout_seconds=2, memory_mb=64, cpu_millis=200, output_bytes=4096),
        priority=Priority.NORMAL,
        lease_expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )


def kinds(received: Received) -> list[tuple[str, str]]:
    return [(h["ce-type"].removeprefix("io.execmesh."), h["ce-subject"]) for h in received]


def test_the_served_saga_asks_for_the_pod_and_times_out_a_silent_run(
    serve: Callable[[str], str],
    sink: tuple[str, Received],
    mongo_database: Database[dict[str, Any]],
) -> None:
    url = serve("saga")
    run = uuid.uuid4().hex[:8]
    quiet, done = f"quiet-{run}", f"done-{run}"
    now = datetime.now(UTC)
    assert post(url, accepted(quiet), f"a1-{run}", at=now) == 202
    assert post(url, accepted(done), f"a2-{run}", at=now) == 202
    assert post(url, PodRunning(execution_id=quiet, pod_name="p"), f"r-{run}", at=now) == 202
    completed = ExecutionCompleted(execution_id=done, exit_code=0)
    assert post(url, completed, f"c-{run}") == 202
    tick = now + timedelta(seconds=2 + 1 + 1)  # start + timeout + grace, and a second more
    assert post(url, PingTick(), f"tick-{run}", at=tick) == 202
    assert kinds(sink[1]) == [
        ("pod.create_requested", quiet),
        ("pod.create_requested", done),
        ("saga.completed", done),
        ("execution.timed_out", quiet),
        ("pod.delete_requested", quiet),
        ("saga.compensated", quiet),
    ]
    assert {h["ce-source"] for h in sink[1]} == {"/execmesh/saga"}
    assert list(mongo_database["sagas"].find()) == []  # heads only for active sagas
    retired = {d["_id"] for d in mongo_database["sagas.retired"].find()}
    assert retired == {quiet, done}


def test_the_served_result_processor_stores_the_first_result(
    serve: Callable[[str], str],
    sink: tuple[str, Received],
    mongo_database: Database[dict[str, Any]],
) -> None:
    url = serve("result_processor")
    run = uuid.uuid4().hex[:8]
    execution_id = f"e-{run}"
    assert post(url, accepted(execution_id), f"a-{run}") == 202
    assert post(url, ExecutionCompleted(execution_id=execution_id, exit_code=4), f"c-{run}") == 202
    late = ExecutionCompleted(execution_id=execution_id, exit_code=5)
    assert post(url, late, f"late-{run}") == 202
    assert kinds(sink[1]) == [
        ("result.stored", execution_id),
        ("pod.delete_requested", execution_id),
    ]
    document = mongo_database["executions"].find_one({"_id": execution_id})
    assert document is not None
    assert (document["status"], document["result"]["exit_code"]) == ("completed", 4)
    assert [late["event_id"] for late in document["late_results"]] == [f"late-{run}"]
