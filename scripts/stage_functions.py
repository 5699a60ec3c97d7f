"""Stage each function for `func deploy`: its folder plus the execmesh library and pins.

A function's build context is its own folder, so the shared library and the pinned
dependencies are copied in beside main.py: build/functions/<name>/{main.py, func.yaml,
execmesh/, requirements.txt, constraints.txt}.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage(function: Path, out: Path) -> Path:
    target = out / function.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(function, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "execmesh", target / "execmesh", ignore=shutil.ignore_patterns("__pycache__")
    )
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = "\n".join(["-c constraints.txt", *dependencies]) + "\n"
    (target / "requirements.txt").write_text(pins)
    shutil.copy(ROOT / "requirements.lock", target / "constraints.txt")
    return target


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "build" / "functions"
    for function in sorted((ROOT / "functions").iterdir()):
        if (function / "func.yaml").exists():
            print(stage(function, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
