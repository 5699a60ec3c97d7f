"""A real local node and a recording CloudEvents sink, for the kube tests.

Ports come from this suite's range (19900-19999): the node of each test module gets its own.
The module name is unique so that test modules can import it by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from execmesh.events import ExecutionSpec, Limits, PodCreateRequested
from execmesh.kube.client import KubeClients, clients_for_url
from execmesh.settings import PROJECT_ROOT
from tests.support.http_sink import serving_posts
from tests.support.node import LocalNode

NAMESPACE = "execmesh"

needs_sandbox = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="the local node needs root and bubblewrap",
)


class Node(LocalNode):
    def clients(self) -> KubeClients:
        return clients_for_url(self.url, NAMESPACE)


def start_node(
    port: int, tmp_path_factory: pytest.TempPathFactory, watch_history: int = 200
) -> Iterator[Node]:
    data_dir = tmp_path_factory.mktemp(f"node-{port}") / "data"
    node = Node(data_dir, ("--watch-history", str(watch_history)), port)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@dataclass(frozen=True)
class Received:
    id: str
    type: str
    source: str
    subject: str | None
    data: dict[str, Any]


@dataclass
class Sink:
    """A CloudEvents receiver that records what it accepts; ``refuse`` answers 503 instead."""

    url: str = ""
    events: list[Received] = field(default_factory=list)
    refuse: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        if self.refuse:
            return 503
        event = Received(
            id=headers["ce-id"],
            type=headers["ce-type"],
            source=headers["ce-source"],
            subject=headers.get("ce-subject"),
            data=json.loads(body),
        )
        with self.lock:
            self.events.append(event)
        return 202

    def of(self, execution_id: str) -> list[Received]:
        with self.lock:
            return [e for e in self.events if e.data.get("execution_id") == execution_id]


@contextlib.contextmanager
def running_sink() -> Iterator[Sink]:
    recorded = Sink()
    with serving_posts(recorded.receive) as url:
        recorded.url = url
        yield recorded


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as recorded:
        yield recorded


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def a_request(
    script: str,
    *,
    language: str = "python",
    version: str = "latest",
    timeout: float = 10,
    memory_mb: int = 128,
    output_bytes: int = 1024 * 1024,
    stdin: str | None = None,
    execution_id: str | None = None,
) -> PodCreateRequested:
    return PodCreateRequested(
        execution_id=execution_id or unique("k"),
        spec=ExecutionSpec(language=language, version=version, script=script, stdin=stdin),
        limits=Limits(
            timeout_seconds=timeout,
            memory_mb=memory_mb,
            cpu_millis=1000,
            output_bytes=output_bytes,
        ),
    )


def local_config_for(node: Node, workdir: Path) -> Path:
    """config/local.yaml with the node's port: how processes under test find this node."""
    local = yaml.safe_load((PROJECT_ROOT / "config" / "local.yaml").read_text())
    local["node"]["port"] = node.port
    path = workdir / "local.yaml"
    path.write_text(yaml.safe_dump(local))
    return path
