"""``execmesh replay``: start a replay session through the broker, then watch or steer it."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from execmesh.events import ReplayRequested
from execmesh.mesh.sender import Emitter, HttpSender
from execmesh.mongo import connect
from execmesh.replay.sessions import Session, SessionStore
from execmesh.settings import Settings


def sessions_from(settings: Settings) -> SessionStore:
    return SessionStore(connect(settings))


def describe(session: Session) -> str:
    return (
        f"{session.id}  {session.state.value:<9} {session.emitted}/{session.matched}"
        f"{'  (dry run)' if session.dry_run else ''}  -> {session.target}"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh replay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="ask the replay function for a new session")
    start.add_argument("--execution", action="append", default=[], dest="execution_ids")
    start.add_argument("--type", action="append", default=[], dest="types")
    start.add_argument("--exclude-type", action="append", default=[], dest="exclude_types")
    start.add_argument("--since", type=datetime.fromisoformat)
    start.add_argument("--until", type=datetime.fromisoformat)
    start.add_argument("--user", dest="user_id")
    start.add_argument("--dry-run", action="store_true")
    start.add_argument("--target", default="broker", help="'broker' or a sink URL")
    start.add_argument("--speed", type=float, help="divide original gaps by this; default: ASAP")
    start.add_argument("--batch-size", type=int, default=100)
    start.add_argument("--max-count", type=int)
    start.add_argument("--reprocess", action="store_true", help="let the pipeline act on them")
    commands.add_parser("list", help="recent sessions")
    for verb in ("status", "pause", "resume", "cancel"):
        commands.add_parser(verb).add_argument("session_id")
    args = parser.parse_args(argv)
    settings = Settings.from_env()

    if args.command == "start":
        fields = {k: v for k, v in vars(args).items() if k != "command"}
        request = ReplayRequested(session_id=uuid.uuid4().hex[:16], **fields)
        sink = settings.k_sink or settings.local_config().broker_url
        with HttpSender(sink) as sender:
            Emitter("replay-cli", sender).emit(request)
        print(request.session_id)
        return 0
    sessions = sessions_from(settings)
    if args.command == "list":
        for session in sessions.find():
            print(describe(session))
        return 0
    if args.command == "status":
        found = sessions.get(args.session_id)
        if found is None:
            parser.exit(1, f"no replay session {args.session_id}\n")
        print(json.dumps(asdict(found), default=str, indent=2))
        return 0
    now = datetime.now(UTC)
    changed = {
        "pause": lambda: sessions.pause(args.session_id),
        "resume": lambda: sessions.resume(args.session_id, now),
        "cancel": lambda: sessions.cancel(args.session_id),
    }[args.command]()
    if not changed:
        parser.exit(1, f"session {args.session_id}: cannot {args.command} it in its state\n")
    print(f"{args.session_id}: {args.command} done")
    return 0
