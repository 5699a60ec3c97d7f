"""``execmesh up``: run the whole local mesh in the foreground; Ctrl-C stops everything.

Each process writes to its own log under ``<data dir>/logs/`` as well as to the terminal.
The local services (Kafka, FerretDB, Redis) are started before by ``make services-up``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from honcho.manager import Manager
from honcho.printer import Printer

from execmesh.local.processes import mesh_processes
from execmesh.settings import PROJECT_ROOT, Settings


class TeePrinter(Printer):  # type: ignore[misc]
    """honcho's terminal printer that also appends each process's lines to its own file."""

    def __init__(self, output: IO[str], log_dir: Path) -> None:
        super().__init__(output)
        self.log_dir = log_dir
        self.files: dict[str, IO[bytes]] = {}

    def write(self, message: Any) -> None:
        super().write(message)
        name = message.name or "system"
        if name not in self.files:
            self.files[name] = (self.log_dir / f"{name}.log").open("ab")
        data = message.data if isinstance(message.data, bytes) else message.data.encode()
        self.files[name].write(data)
        self.files[name].flush()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh up", description=__doc__)
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--only", nargs="*", help="run only these processes")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    manager = Manager(printer=TeePrinter(sys.stdout, log_dir))
    processes = mesh_processes(settings.local_config(), ping_interval=args.ping_interval)
    for process in processes:
        if args.only and process.name not in args.only:
            continue
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **process.env}
        manager.add_process(process.name, shlex.join(process.argv), env=env, cwd=str(PROJECT_ROOT))
    manager.loop()
    return int(manager.returncode or 0)
