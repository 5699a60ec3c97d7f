"""``execmesh keys create --user U [--admin]``: a new API key, printed once, stored hashed."""

from __future__ import annotations

import argparse

from execmesh.client.keys import KeyStore, Role
from execmesh.mongo import connect
from execmesh.settings import Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh keys")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create an API key (shown once)")
    create.add_argument("--user", required=True)
    create.add_argument("--admin", action="store_true", help="an admin key")
    create.add_argument("--name", default="", help="what the key is for")
    args = parser.parse_args(argv)
    database = connect(Settings.from_env())
    try:
        role = Role.ADMIN if args.admin else Role.USER
        created = KeyStore(database).create(args.user, role, name=args.name)
    finally:
        database.client.close()
    print(created.key)
    return 0
