"""Which processes make up the local mesh, and the command line of each.

Ports come from ``config/local.yaml`` only; every process is told where the broker is through
``K_SINK``, as a SinkBinding would on a cluster. The API may call back receivers on this
machine (loopback), which a deployed API refuses by default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from execmesh.settings import PROJECT_ROOT, LocalConfig

LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


@dataclass(frozen=True)
class Function:
    service: str
    directory: str
    target: str = "handle"


FUNCTIONS = (
    Function("coordinator", "coordinator"),
    Function("saga", "saga"),
    Function("k8s-worker", "k8s_worker"),
    Function("result-processor", "result_processor"),
    Function("replay", "replay"),
    Function("dlq", "dlq"),
)


@dataclass(frozen=True)
class Process:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def mesh_processes(
    local: LocalConfig, *, ping_interval: float, root: Path = PROJECT_ROOT
) -> list[Process]:
    """The processes of the whole pipeline; functions whose folder is missing are skipped."""
    sink = {"K_SINK": local.broker_url}
    processes = [
        Process("broker", (_bin("execmesh"), "broker")),
        Process("node", (_bin("execmesh"), "node")),
        Process("ping", (_bin("execmesh"), "ping", "--interval", str(ping_interval))),
    ]
    for function in FUNCTIONS:
        source = root / "functions" / function.directory / "main.py"
        if not source.exists():
            continue
        argv = (
            _bin("functions-framework"),
            "--target",
            function.target,
            "--source",
            str(source),
            "--host",
            local.host,
            "--port",
            str(local.service_ports[function.service]),
        )
        processes.append(Process(function.service, argv, dict(sink)))
    monitor = root / "functions" / "pod_monitor" / "main.py"
    if monitor.exists():
        processes.append(Process("pod-monitor", (sys.executable, str(monitor)), dict(sink)))
    api = root / "api" / "app.py"
    if api.exists():
        port = str(local.service_ports["api"])
        server = (_bin("uvicorn"), "api.app:app", "--host", local.host, "--port", port)
        # On one machine the callback receivers are local too, unless the operator says otherwise.
        allowed = os.environ.get("EXECMESH_API_CALLBACK_ALLOWED_NETWORKS", LOOPBACK_NETWORKS)
        env = {**sink, "EXECMESH_API_CALLBACK_ALLOWED_NETWORKS": allowed}
        processes.append(Process("api", server, env))
    return processes
