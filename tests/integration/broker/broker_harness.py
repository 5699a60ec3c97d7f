"""Test harness: a real `execmesh broker` process on real Kafka, and recording subscribers.

Every test gets its own namespace, so its topic and consumer groups are its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from execmesh.settings import Settings

Answer = tuple[int, dict[str, str], bytes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def id(self) -> str:
        return self.headers.get("ce-id", "")


@dataclass
class Subscriber:
    """An HTTP server in its own thread that records every request and answers as told."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    answers: dict[str, Callable[[Received], Answer]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Subscriber:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def handle(request: web.Request) -> web.Response:
            record = Received(
                request.path,
                {k.lower(): v for k, v in request.headers.items()},
                await request.read(),
                time.monotonic(),
            )
            self.received.append(record)
            answer = self.answers.get(request.path)
            status, headers, body = answer(record) if answer else (202, {}, b"")
            return web.Response(status=status, headers=headers, body=body)

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
            ready.set()

        def run() -> None:
            assert self._loop is not None
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "subscriber did not start"
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = self._runner = None

    def at(self, path: str) -> list[Received]:
        return [r for r in list(self.received) if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.at(path))} of {count} events after {timeout}s")


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    server = Subscriber().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def trigger(
    name: str,
    subscriber_uri: str,
    *,
    filter: dict[str, Any] | None = None,
    filters: list[dict[str, Any]] | None = None,
    delivery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"broker": "default", "subscriber": {"uri": subscriber_uri}}
    if filter is not None:
        spec["filter"] = filter
    if filters is not None:
        spec["filters"] = filters
    if delivery is not None:
        spec["delivery"] = delivery
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": spec,
    }


@dataclass
class BrokerProcess:
    """`execmesh broker` as a child process, as `make run` starts it."""

    directory: Path
    namespace: str
    triggers: list[dict[str, Any]]
    delivery: dict[str, Any] | None = None
    services: dict[str, int] = field(default_factory=dict)
    bootstrap: str = field(default_factory=lambda: Settings.from_env().kafka_bootstrap_servers)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.namespace}/default"

    def write_manifests(self) -> None:
        eventing = self.directory / "eventing"
        eventing.mkdir(parents=True, exist_ok=True)
        broker: dict[str, Any] = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {
                "name": "default",
                "namespace": self.namespace,
                "annotations": {"eventing.knative.dev/broker.class": "Kafka"},
            },
            "spec": {} if self.delivery is None else {"delivery": self.delivery},
        }
        (eventing / "broker.yaml").write_text(yaml.safe_dump(broker))
        (eventing / "triggers.yaml").write_text(yaml.safe_dump_all(self.triggers))
        local = {
            "namespace": self.namespace,
            "broker": {"name": "default", "port": self.port},
            "node": {"port": free_port()},
            "services": {name: {"port": port} for name, port in self.services.items()},
        }
        (self.directory / "local.yaml").write_text(yaml.safe_dump(local))

    def start(self, timeout: float = 60.0) -> BrokerProcess:
        self.write_manifests()
        self.starts += 1
        log = (self.directory / f"broker-{self.starts}.log").open("wb")
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "execmesh.cli",
                "broker",
                "--eventing-dir",
                str(self.directory / "eventing"),
                "--local-config",
                str(self.directory / "local.yaml"),
                "--partitions",
                "3",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"broker exited: {self.log_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"broker not ready after {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.directory.glob("broker-*.log"))
        )

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def post(
        self,
        event_id: str,
        type_: str = "io.execmesh.test",
        *,
        client: httpx.Client | None = None,
        **attributes: str,
    ) -> int:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/test",
            "ce-type": type_,
            "content-type": "application/json",
        }
        headers.update({f"ce-{k}": v for k, v in attributes.items()})
        http = client or httpx
        return http.post(self.url, headers=headers, content=b'{"n": 1}', timeout=10).status_code


@pytest.fixture
def start_broker(tmp_path: Path, namespace: str) -> Iterator[Callable[..., BrokerProcess]]:
    started: list[BrokerProcess] = []

    def start(triggers: list[dict[str, Any]], **options: Any) -> BrokerProcess:
        broker = BrokerProcess(tmp_path, namespace, triggers, **options).start()
        started.append(broker)
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()
