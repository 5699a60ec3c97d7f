"""Callback delivery goes only to an address checked at delivery time, and follows no redirect."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network

import anyio
import pytest
import redis.asyncio as aioredis

from api.callback_policy import CallbackPolicy, IPAddress
from api.callbacks import ATTEMPTS, Callbacks

LOOPBACK = (ip_network("127.0.0.0/8"),)


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    redirect_to: str | None = None
    # A hostile receiver: an endless answer, or a status line that never comes.
    endless_body: bool = False
    stall_seconds: float = 0.0
    body_bytes_sent: int = 0
    received: list[tuple[str, str]]


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((self.path, self.headers["host"]))
        if self.server.stall_seconds:
            time.sleep(self.server.stall_seconds)
            return
        if self.server.endless_body:
            self.send_response(200)
            self.end_headers()
            chunk = b"x" * 65536
            with contextlib.suppress(OSError):
                for _ in range(16384):  # 1 GiB, unless the client stops reading
                    self.wfile.write(chunk)
                    self.server.body_bytes_sent += len(chunk)
            return
        if self.server.redirect_to is None:
            self.send_response(204)
        else:
            self.send_response(307)
            self.send_header("Location", self.server.redirect_to)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class ScriptedResolver:
    """Answers each lookup with the next list of addresses (the last one repeats)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = [[ip_address(a) for a in answer] for answer in answers]
        self.lookups: list[str] = []

    async def __call__(self, host: str) -> list[IPAddress]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


def deliver(policy: CallbackPolicy, url: str, attempt_seconds: float = 10.0) -> bool:
    async def body() -> bytes:
        return b'{"status":"completed"}'

    async def run() -> bool:
        # Never connected: delivery itself does not use Redis.
        callbacks = Callbacks(
            aioredis.Redis(),
            "s3cret",
            policy=policy,
            first_backoff=0.01,
            attempt_seconds=attempt_seconds,
        )
        try:
            return await callbacks.deliver(url, body)
        finally:
            await callbacks.aclose()

    return anyio.run(run)


def test_a_host_that_resolves_to_a_private_address_at_delivery_gets_nothing(
    receiver: Receiver,
) -> None:
    rebinding = ScriptedResolver(["93.184.215.14"], ["127.0.0.1"])
    policy = CallbackPolicy(resolve=rebinding)
    url = f"http://localhost:{receiver.server_port}/hook"
    anyio.run(policy.allowed_addresses, url)  # what the submission saw: a public address

    assert deliver(policy, url) is False
    assert receiver.received == []
    assert rebinding.lookups == ["localhost", "localhost"]  # refused at once, no retries


def test_delivery_connects_to_the_checked_address_and_keeps_the_host_name(
    receiver: Receiver,
) -> None:
    policy = CallbackPolicy(LOOPBACK, resolve=ScriptedResolver(["127.0.0.1"]))
    host = f"hooks.example:{receiver.server_port}"

    assert deliver(policy, f"http://{host}/hook") is True
    assert receiver.received == [("/hook", host)]


def test_a_redirect_is_never_followed(receiver: Receiver) -> None:
    receiver.redirect_to = f"http://127.0.0.1:{receiver.server_port}/elsewhere"
    policy = CallbackPolicy(LOOPBACK, resolve=ScriptedResolver(["127.0.0.1"]))

    assert deliver(policy, f"http://hooks.example:{receiver.server_port}/hook") is False
    assert {path for path, _ in receiver.received} == {"/hook"}


def test_an_endless_answer_is_never_read(receiver: Receiver) -> None:
    receiver.endless_body = True
    policy = CallbackPolicy(LOOPBACK, resolve=ScriptedResolver(["127.0.0.1"]))

    assert deliver(policy, f"http://hooks.example:{receiver.server_port}/hook") is True
    assert receiver.received == [("/hook", f"hooks.example:{receiver.server_port}")]
    # What the kernel's socket buffers took before the client hung up, not the gigabyte.
    assert receiver.body_bytes_sent < 64 * 1024 * 1024


def test_a_receiver_that_never_answers_fails_each_attempt_at_its_deadline(
    receiver: Receiver,
) -> None:
    receiver.stall_seconds = 3
    policy = CallbackPolicy(LOOPBACK, resolve=ScriptedResolver(["127.0.0.1"]))

    started = time.monotonic()
    assert deliver(policy, f"http://hooks.example:{receiver.server_port}/hook", 0.2) is False
    assert len(receiver.received) == ATTEMPTS
    assert time.monotonic() - started < ATTEMPTS * 0.2 + 5
