"""``execmesh dlq``: look at dead letters, retry them now, or discard them."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from execmesh.deadletters.letter import DeadLetter, State
from execmesh.deadletters.store import DeadLetterStore
from execmesh.mongo import connect
from execmesh.settings import Settings


def store_from(settings: Settings) -> DeadLetterStore:
    return DeadLetterStore(connect(settings))


def summary(letter: DeadLetter) -> str:
    return (
        f"{letter.id}  {letter.state.value:<9} {letter.attempts:>2}  "
        f"{letter.event_type}  -> {letter.destination}  {letter.last_error[:60]}"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh dlq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--state", choices=[s.value for s in State])
    listing.add_argument("--type", dest="event_type")
    listing.add_argument("--limit", type=int, default=50)
    commands.add_parser("show", help="one dead letter, whole").add_argument("id")
    commands.add_parser("retry", help="retry one now").add_argument("id")
    commands.add_parser("discard", help="give one up").add_argument("id")
    retry_all = commands.add_parser("retry-all", help="retry every pending or parked match")
    retry_all.add_argument("--type", dest="event_type")
    retry_all.add_argument("--destination")
    args = parser.parse_args(argv)

    store = store_from(Settings.from_env())
    now = datetime.now(UTC)
    if args.command == "list":
        state = State(args.state) if args.state else None
        for letter in store.find(state=state, event_type=args.event_type, limit=args.limit):
            print(summary(letter))
        return 0
    if args.command == "show":
        found = store.get(args.id)
        if found is None:
            parser.exit(1, f"no dead letter {args.id}\n")
        print(json.dumps(found.__dict__, default=str, indent=2))
        return 0
    if args.command == "retry":
        return _report(store.retry_now({"_id": args.id}, now), "due now", parser)
    if args.command == "discard":
        return _report(int(store.discard(args.id)), "discarded", parser)
    query = {}
    if args.event_type:
        query["attributes.type"] = args.event_type
    if args.destination:
        query["destination"] = args.destination
    print(f"{store.retry_now(query, now)} due now")
    return 0


def _report(count: int, done: str, parser: argparse.ArgumentParser) -> int:
    if count == 0:
        parser.exit(1, "no such dead letter in a state that allows it\n")
    print(f"{count} {done}")
    return 0
