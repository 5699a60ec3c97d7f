"""Generate the JSON Schemas of the event catalogue into ``eventing/schemas/``.

``python -m execmesh.schemas`` writes them; ``--check`` fails when the files are stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from execmesh.events import CATALOGUE
from execmesh.settings import PROJECT_ROOT

SCHEMAS_DIR = PROJECT_ROOT / "eventing" / "schemas"


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, for every event type of the catalogue."""
    rendered = {}
    for ce_type, model in sorted(CATALOGUE.items()):
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{ce_type}.json",
            **model.model_json_schema(),
        }
        rendered[f"{ce_type}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def stale_files(directory: Path) -> list[str]:
    expected = render_schemas()
    present = {path.name for path in directory.glob("*.json")} if directory.exists() else set()
    stale = [
        name
        for name, text in expected.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    return sorted(stale + sorted(present - expected.keys()))


def write_schemas(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_schemas()
    for path in directory.glob("*.json"):
        if path.name not in expected:
            path.unlink()
    for name, text in expected.items():
        (directory / name).write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m execmesh.schemas")
    parser.add_argument("--check", action="store_true", help="fail if the schemas are stale")
    parser.add_argument("--dir", type=Path, default=SCHEMAS_DIR)
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        if stale:
            print(f"stale schemas (run `make schemas`): {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    write_schemas(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
