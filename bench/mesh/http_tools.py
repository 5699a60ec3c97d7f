"""Minimal HTTP/1.1 load generator and sink for the mesh benchmark.

Deliberately bare (asyncio streams, keep-alive, no parsing beyond what HTTP/1.1 needs) so
that on a 2-core box the CPU goes to the broker being measured, not to the harness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


def binary_request(host: str, port: int, path: str, event_id: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "ce-specversion: 1.0\r\n"
        f"ce-id: {event_id}\r\nce-source: /bench\r\nce-type: io.execmesh.bench\r\n"
        f"ce-partitionkey: {key}\r\nce-senttime: {time.time_ns()}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def load(
    host: str, port: int, path: str, total: int, connections: int, body: bytes, keys: int
) -> list[int]:
    """POST `total` events over `connections` keep-alive connections; the statuses."""
    statuses: list[int] = []
    counter = iter(range(total))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                writer.write(binary_request(host, port, path, f"e-{n}", f"k-{n % keys}", body))
                statuses.append(await read_response(reader))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


class Sink(asyncio.Protocol):
    """Answers every request 202 and reports (event id, sent ns, received ns)."""

    def __init__(self, record: Callable[[str, int, int], None]) -> None:
        self._record = record
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1")
            fields = {}
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            length = int(fields.get("content-length", "0"))
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length :]
            self._record(fields.get("ce-id", ""), int(fields.get("ce-senttime", "0")), now)
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
