"""The ``execmesh`` console script: one subcommand per long-running process or user task.

Each subcommand lives in its own module and exposes ``main(argv) -> int``; this file only
dispatches, importing lazily so that ``execmesh triggers`` does not load the node.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("execmesh.broker.main", "run the local Knative Kafka broker"),
    "triggers": ("execmesh.broker.triggers_cli", "list triggers as `kn trigger list` does"),
    "node": ("execmesh.node.main", "run the local node: the pod API over a sandbox"),
    "ping": ("execmesh.sources.ping", "run the local PingSource adapter"),
    "pod-monitor": ("execmesh.kube.monitor", "watch executor pods and emit what became of them"),
    "up": ("execmesh.local.up", "run the whole local mesh in the foreground"),
    "services": ("execmesh.localservices", "start, stop or check Kafka, FerretDB and Redis"),
    "dlq": ("execmesh.deadletters.cli", "list, show, retry or discard dead letters"),
    "replay": ("execmesh.replay.cli", "start and steer replay sessions"),
    "run": ("execmesh.client.cli:run", "run a file through the API and print its output"),
    "status": ("execmesh.client.cli:status", "show an execution's status and result"),
    "cancel": ("execmesh.client.cli:cancel", "cancel an execution"),
    "list": ("execmesh.client.cli:list_", "list your executions"),
    "keys": ("execmesh.client.keys_cli", "create API keys"),
}


def usage() -> str:
    lines = ["usage: execmesh COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"execmesh: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # "module" runs module.main; "module:function" runs that function of the module.
    module_name, _, function = SUBCOMMANDS[command][0].partition(":")
    module = importlib.import_module(module_name)
    result: int = getattr(module, function or "main")(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
