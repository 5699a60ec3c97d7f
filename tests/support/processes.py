"""Processes under test: started with their output in a log, ready once a URL answers 200,
and stopped however the test ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

# Where this virtualenv's commands are: functions-framework, execmesh.
BIN = Path(sys.executable).parent


@contextmanager
def running_process(
    command: Sequence[str], env: Mapping[str, str], log_path: Path, ready_url: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in a session of its own, with ``env`` over this process's environment.

    The whole session is stopped at the end, so that workers it forked do not outlive it.
    """
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            if ready_url is not None:
                wait_until_ready(ready_url, process, log_path)
            yield process
        finally:
            stop_process(process, group=True)


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} not ready after {timeout} s: {log.read_text()[-2000:]}")


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, *, group: bool = False
) -> None:
    """Send ``sig`` (to its whole session when ``group``), then SIGKILL if it outlives 15 s."""

    def send(signal_number: int) -> None:
        if group:
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)

    send(sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(5)
