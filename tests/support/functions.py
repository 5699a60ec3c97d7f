"""The project's functions (functions/<name>/main.py) as tests run them: loaded in-process, or
served by the real functions-framework CLI."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from execmesh.settings import PROJECT_ROOT
from tests.support.processes import BIN, running_process


def function_main(name: str) -> Path:
    return PROJECT_ROOT / "functions" / name / "main.py"


def load_function(name: str) -> ModuleType:
    """A fresh module of ``functions/<name>/main.py``, as functions-framework loads it."""
    spec = importlib.util.spec_from_file_location(f"{name}_main", function_main(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def functions_framework(target: str, source: Path, port: int) -> list[str]:
    return [
        *(str(BIN / "functions-framework"), "--target", target, "--source", str(source)),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


@contextmanager
def serving_function(
    target: str, source: Path, port: int, env: Mapping[str, str], log_path: Path
) -> Iterator[str]:
    """``target`` of ``source`` under functions-framework; yields its URL once it is ready."""
    url = f"http://127.0.0.1:{port}"
    command = functions_framework(target, source, port)
    with running_process(command, env, log_path, f"{url}/health/readiness"):
        yield url
