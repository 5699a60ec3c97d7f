"""Malformed input gets the right status, and the broker keeps serving everyone else."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from broker_harness import BrokerProcess, Subscriber, trigger

pytestmark = pytest.mark.services

GOOD = {
    "ce-specversion": "1.0",
    "ce-id": "good-1",
    "ce-source": "/test",
    "ce-type": "io.execmesh.test",
    "content-type": "application/json",
}
STRUCTURED = {"content-type": "application/cloudevents+json"}


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in GOOD.items() if k != name}


def envelope(**fields: object) -> bytes:
    base: dict[str, object] = {"specversion": "1.0", "id": "s-1", "source": "/t", "type": "t"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


CASES: list[tuple[str, str, str, dict[str, str], bytes, set[int]]] = [
    ("missing id", "POST", "", without("ce-id"), b"{}", {400}),
    ("missing source", "POST", "", without("ce-source"), b"{}", {400}),
    ("missing type", "POST", "", without("ce-type"), b"{}", {400}),
    ("missing specversion", "POST", "", without("ce-specversion"), b"{}", {400}),
    ("specversion 0.3", "POST", "", {**GOOD, "ce-specversion": "0.3"}, b"{}", {400}),
    ("structured missing id", "POST", "", STRUCTURED, envelope(id=None), {400}),
    ("structured specversion 2.0", "POST", "", STRUCTURED, envelope(specversion="2.0"), {400}),
    ("structured broken JSON", "POST", "", STRUCTURED, b'{"specversion": "1.0", "id": ', {400}),
    ("structured array", "POST", "", STRUCTURED, b"[]", {400}),
    (
        "structured as application/json",
        "POST",
        "",
        {"content-type": "application/json"},
        envelope(),
        {400},
    ),
    ("structured as text/plain", "POST", "", {"content-type": "text/plain"}, envelope(), {400}),
    ("no headers at all", "POST", "", {}, b"hello", {400}),
    (
        "batch",
        "POST",
        "",
        {"content-type": "application/cloudevents-batch+json"},
        b"[" + envelope() + b"]",
        {400},
    ),
    ("oversize", "POST", "", GOOD, b"x" * (1024 * 1024 + 1), {413, 400}),
    ("much oversize", "POST", "", GOOD, b"x" * (5 * 1024 * 1024), {413, 400}),
    ("unknown broker", "POST", "/{namespace}/other", GOOD, b"{}", {404}),
    ("unknown namespace", "POST", "/nowhere/default", GOOD, b"{}", {404}),
    ("GET", "GET", "", {}, b"", {405}),
    ("PUT", "PUT", "", GOOD, b"{}", {405}),
    ("DELETE", "DELETE", "", {}, b"", {405}),
]


def test_malformed_events_get_the_right_status_and_nothing_else_is_affected(
    start_broker: Callable[..., BrokerProcess], subscriber: Subscriber
) -> None:
    broker = start_broker([trigger("all", subscriber.url("/"))])
    base = f"http://127.0.0.1:{broker.port}"
    results = {}
    with httpx.Client(timeout=10) as client:
        for name, method, path, headers, body, _ in CASES:
            if path.startswith("/nowhere"):
                url = base + path
            else:
                url = (
                    broker.url + path.replace("/other", "")
                    if path == ""
                    else (f"{base}/{broker.namespace}{path}")
                )
            results[name] = client.request(method, url, headers=headers, content=body).status_code
            assert broker.process is not None and broker.process.poll() is None, name
        assert client.post(broker.url, headers=GOOD, content=b'{"ok": true}').status_code == 202
    assert {n: s for n, s in results.items()} == {
        n: s if s in allowed else f"{s} (wanted {allowed})"
        for (n, *_, allowed), s in zip(CASES, results.values(), strict=True)
    }
    [delivered] = subscriber.wait_for("/", 1)
    time.sleep(0.5)
    assert [r.id for r in subscriber.received] == ["good-1"]
    assert delivered.body == b'{"ok": true}'
