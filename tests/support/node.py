"""The local node (``execmesh node``), started and stopped by the tests that need one."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from execmesh.settings import PROJECT_ROOT
from tests.support.ports import free_port
from tests.support.processes import stop_process, wait_until_ready


@dataclass
class LocalNode:
    data_dir: Path
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log_path = self.data_dir.parent / f"node-{self.port}.log"
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "execmesh.node.main", "--port", str(self.port)),
                *("--data-dir", str(self.data_dir), *self.extra_args),
            ],
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )
        wait_until_ready(f"{self.url}/healthz", self.process, log_path, timeout=20)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, sig)
        self.process = None
