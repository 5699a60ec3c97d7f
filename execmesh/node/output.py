"""The container log as the node keeps it: raw bytes, capped, never filling the disk.

Output past the cap is still read (so the program never blocks on a full pipe) but
dropped, and the sink remembers that it truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

CHUNK = 256 * 1024


class LogSink:
    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self.truncated = False
        self._file = path.open("wb", buffering=0)

    def write(self, data: bytes) -> None:
        room = self.cap - self.written
        if len(data) > room:
            self.truncated = True
            data = data[: max(0, room)]
        if data:
            self._file.write(data)
            self.written += len(data)

    def follow(self, fd: int) -> asyncio.Future[None]:
        """Read ``fd`` until end of file on the running loop; the future resolves at EOF."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)

        def readable() -> None:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.write(data)
                return
            loop.remove_reader(fd)
            os.close(fd)
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)

        def abandon(_: asyncio.Future[None]) -> None:
            if done.cancelled():
                loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

        done.add_done_callback(abandon)
        return done

    def close(self) -> None:
        self._file.close()


def read_capped(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as file:
            return file.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - limit))
            return file.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""
