"""The ingress in processes of its own, so that taking events in and delivering them out run
on different cores (one Python process is one core, whatever its threads).

The parent binds the listening socket and hands it to each child, which serves it with
uvicorn and its own Kafka producer once the parent writes `serve` on its stdin (when every
trigger's consumer is in place). When the parent dies, even by kill -9, the kernel kills
the child (PR_SET_PDEATHSIG) before the parent can be reaped, so a restarted broker never
finds a stale ingress answering on its port; a request the child was serving gets no 202
and is sent again. A closed stdin pipe stops a child too, where prctl is not available.

    python -m execmesh.broker.ingress_process --fd FD --bootstrap HOST:PORT --topics JSON
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

import uvicorn
import uvloop

from execmesh.broker.ingress import build_app
from execmesh.broker.kafka_io import KafkaEventLog

log = logging.getLogger(__name__)

GO = b"serve\n"


class IngressProcesses:
    def __init__(
        self, host: str, port: int, topics: Mapping[str, str], bootstrap: str, count: int
    ) -> None:
        self._address = (host, port)
        self._topics = dict(topics)
        self._bootstrap = bootstrap
        self._count = count
        self._socket: socket.socket | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    def start(self, bind_timeout: float = 10.0) -> None:
        """Call from the main thread: the children die with the thread that started them."""
        self._socket = _bind(self._address, bind_timeout)
        fd = self._socket.fileno()
        command = [
            sys.executable, "-m", "execmesh.broker.ingress_process",
            "--fd", str(fd), "--bootstrap", self._bootstrap,
            "--topics", json.dumps(self._topics), "--parent", str(os.getpid()),
        ]  # fmt: skip
        for _ in range(self._count):
            self._children.append(subprocess.Popen(command, pass_fds=(fd,), stdin=subprocess.PIPE))

    def serve(self) -> None:
        """Let the children take traffic: every trigger's consumer is in place."""
        for child in self._children:
            assert child.stdin is not None
            child.stdin.write(GO)
            child.stdin.flush()

    def exited(self) -> int | None:
        """The exit code of a child that stopped on its own, if any did."""
        for child in self._children:
            code = child.poll()
            if code is not None:
                return code
        return None

    def stop(self, timeout: float = 10.0) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self._children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._socket is not None:
            self._socket.close()


def _bind(address: tuple[str, int], timeout: float) -> socket.socket:
    """Retry while a previous broker's ingress, whose parent was killed, is still closing."""
    deadline = time.monotonic() + timeout
    while True:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
        except OSError:
            listener.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        listener.listen(2048)
        listener.set_inheritable(True)
        return listener


async def serve(fd: int, topics: Mapping[str, str], bootstrap: str) -> None:
    event_log = await asyncio.to_thread(KafkaEventLog, bootstrap)
    if await asyncio.to_thread(os.read, sys.stdin.fileno(), len(GO)) != GO:
        await asyncio.to_thread(event_log.close)
        return  # the parent died before the broker was ready
    config = uvicorn.Config(
        build_app(topics, event_log),
        fd=fd,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    def stop(signum: int = 0, frame: FrameType | None = None) -> None:
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    _stop_when_parent_dies(stop)
    try:
        await server.serve()
    finally:
        await asyncio.to_thread(event_log.close)


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL from the kernel when the parent dies: a dying broker's ingress must not go on
    answering (its health check included) while a restarted one starts."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the request took effect


def _stop_when_parent_dies(stop: Callable[[], None]) -> None:
    def watch() -> None:
        # os.read, not sys.stdin: a daemon thread inside BufferedReader's lock makes the
        # interpreter's shutdown abort.
        while os.read(sys.stdin.fileno(), 1024):
            pass
        stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh.broker.ingress_process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.fd, json.loads(args.topics), args.bootstrap))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
