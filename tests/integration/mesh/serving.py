"""Real processes for the mesh's integration tests: a recording sink, a served function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.http_sink import serving_posts
from tests.support.ports import free_port

BIN = Path(sys.executable).parent

ECHO_SOURCE = """
    from execmesh.events import ExecutionCancelled
    from execmesh.mesh import Emission, cloud_event_function


    def handle(event, ctx):
        reason = f"echo of {event.id}"
        execution_id = event.payload.execution_id
        return [Emission(ExecutionCancelled(execution_id=execution_id, reason=reason))]


    echo = cloud_event_function("echo", handle)
    served_as_handle = echo
"""


@dataclass
class Sink:
    """A CloudEvents receiver that records what it is sent and answers ``status``."""

    url: str = ""
    status: int = 202
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)


@contextmanager
def running_sink() -> Iterator[Sink]:
    recorder = Sink()

    def record(headers: dict[str, str], body: bytes) -> int:
        recorder.received.append((headers, body))
        return recorder.status

    with serving_posts(record, path="/default") as url:
        recorder.url = url
        yield recorder


@contextmanager
def running_function(
    target: str, workdir: Path, env: Mapping[str, str], port: int | None = None
) -> Iterator[str]:
    """``functions-framework`` serving ``ECHO_SOURCE``; yields its URL once it is ready."""
    source = workdir / "main.py"
    source.write_text(textwrap.dedent(ECHO_SOURCE))
    port = port or free_port()
    command = [
        str(BIN / "functions-framework"),
        *("--target", target, "--source", str(source), "--host", "127.0.0.1"),
        *("--port", str(port)),
    ]
    url = f"http://127.0.0.1:{port}"
    with running_process(command, env, workdir / "function.log", f"{url}/health/readiness"):
        yield url


@contextmanager
def running_process(
    command: Sequence[str], env: Mapping[str, str], log_path: Path, ready_url: str
) -> Iterator[None]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, "WORKERS": "1", "THREADS": "4", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(ready_url, process, log_path)
            yield
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not ready after 30 s: {log.read_text()[-2000:]}")
