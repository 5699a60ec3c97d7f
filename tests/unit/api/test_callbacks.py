"""Callback delivery goes only to an address checked at delivery time, and follows no redirect."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from ipaddress import ip_address, ip_network

import anyio
import pytest
import redis.asyncio as aioredis

from api.callback_policy import CallbackPolicy, IPAddress
from api.callbacks import Callbacks

LOOPBACK = (ip_network("127.0.0.0/8"),)


class Receiver(HTTPServer):
    redirect_to: str | None = None
    received: list[tuple[str, str]]


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((self.path, self.headers["host"]))
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


def deliver(policy: CallbackPolicy, url: str) -> bool:
    async def body() -> bytes:
        return b'{"status":"completed"}'

    async def run() -> bool:
        # Never connected: delivery itself does not use Redis.
        callbacks = Callbacks(aioredis.Redis(), "s3cret", policy=policy, first_backoff=0.01)
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
