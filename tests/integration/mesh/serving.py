"""Real processes for the mesh's integration tests: a recording sink, a served function."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.functions import serving_function
from tests.support.http_sink import serving_posts
from tests.support.ports import free_port

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
    env = {"WORKERS": "1", "THREADS": "4", **env}
    port = port or free_port()
    with serving_function(target, source, port, env, workdir / "function.log") as url:
        yield url
