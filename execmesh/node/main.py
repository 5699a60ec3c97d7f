"""``execmesh node``: serve the pod API on 127.0.0.1 and run pods in sandboxes."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from execmesh.node.api import NodeApi, build_app
from execmesh.node.hostfs import MissingPodexec, check_podexec, scratch_root
from execmesh.node.kubelet import Kubelet, KubeletConfig
from execmesh.node.sandbox import NodeLimits
from execmesh.node.store import Store
from execmesh.settings import Settings

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str], settings: Settings) -> argparse.Namespace:
    local = settings.local_config()
    parser = argparse.ArgumentParser(prog="execmesh node", description=__doc__)
    parser.add_argument("--host", default=local.host, help="address to listen on")
    parser.add_argument("--port", type=int, default=local.node_port, help="port of the API")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=settings.data_dir / "node",
        help="pod records, logs and per-pod files (kept across restarts)",
    )
    parser.add_argument("--max-running", type=int, default=16, help="pods run at once")
    parser.add_argument(
        "--log-bytes", type=int, default=NodeLimits.log_bytes, help="cap on each pod's log"
    )
    parser.add_argument(
        "--pids", type=int, default=NodeLimits.pids, help="pids.max when the pod names none"
    )
    parser.add_argument(
        "--watch-history", type=int, default=2000, help="events kept for watch resumes"
    )
    parser.add_argument(
        "--podexec",
        type=Path,
        default=settings.podexec_path,
        help="the privilege-dropping launcher that `make setup` builds",
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(list(argv))


def create_app(args: argparse.Namespace) -> Starlette:
    data_dir: Path = args.data_dir.resolve()
    config = KubeletConfig(
        data_dir=data_dir,
        podexec=args.podexec,
        run_root=scratch_root(data_dir),
        limits=NodeLimits(pids=args.pids, log_bytes=args.log_bytes),
        max_running=args.max_running,
        # One node per data dir, so two nodes on one machine never share cgroups.
        cgroup_name="execmesh-node-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:10],
    )
    store = Store(data_dir / "objects.sqlite3", history=args.watch_history)
    kubelet = Kubelet(store, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        from execmesh.pods.runtimes import available

        log.info("local runtimes: %s", ", ".join(r.image for r in available("local")))
        kubelet.start()
        try:
            yield
        finally:
            await kubelet.stop()
            store.close()

    return build_app(NodeApi(store, kubelet), lifespan)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv, Settings.from_env())
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Two nodes on one data dir would run every pod twice and fight over its cgroups.
    lock = (data_dir / "node.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"execmesh node: another node is using {data_dir}", file=sys.stderr)
        return 1
    try:
        check_podexec(args.podexec)
    except MissingPodexec as exc:
        print(f"execmesh node: {exc}", file=sys.stderr)
        return 1
    app = create_app(args)
    log.info("execmesh node on http://%s:%d, data in %s", args.host, args.port, args.data_dir)
    # Watches are endless streams: on shutdown give them a second, then cut them.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
