"""The CLI's pure parts: what it sends, and the exit code it gives back."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from execmesh.cli import SUBCOMMANDS
from execmesh.client.cli import EXIT_NOT_RUN, language_of, request_body, show_result


class NoClient:
    def output(self, execution_id: str, stream: str) -> bytes:
        return b"from the link\n"


def args(tmp_path: Path, **given: Any) -> argparse.Namespace:
    program = tmp_path / "prog.rb"
    program.write_text("puts 1\n")
    defaults = {"file": str(program), "lang": None, "version": "latest", "args": []}
    return argparse.Namespace(
        **{**defaults, "stdin": None, "timeout": None, "memory": None, **given}
    )


def test_the_language_comes_from_the_extension_unless_given() -> None:
    assert language_of(Path("a.py"), None) == "python"
    assert language_of(Path("a.py"), "bash") == "bash"
    with pytest.raises(SystemExit):
        language_of(Path("a.txt"), None)


def test_the_body_carries_the_file_stdin_and_only_the_limits_asked(tmp_path: Path) -> None:
    stdin = tmp_path / "in"
    stdin.write_text("data")
    body = request_body(args(tmp_path, stdin=str(stdin), timeout=5.0))
    assert body["language"] == "ruby" and body["script"] == "puts 1\n"
    assert body["stdin"] == "data" and body["limits"] == {"timeout_seconds": 5.0}
    assert "limits" not in request_body(args(tmp_path))


def test_a_completed_run_exits_with_its_code_and_prints_linked_output(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    execution = {
        "id": "e1",
        "status": "completed",
        "result": {"exit_code": 4, "stdout": {"data": None, "size": 14}, "stderr": None},
    }
    assert show_result(NoClient(), execution) == 4  # type: ignore[arg-type]
    assert capfdbinary.readouterr().out == b"from the link\n"


def test_a_run_that_did_not_end_by_itself_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    execution = {"id": "e1", "status": "rejected", "result": {"message": "too big"}}
    assert show_result(NoClient(), execution) == EXIT_NOT_RUN  # type: ignore[arg-type]
    assert "rejected: too big" in capsys.readouterr().err


def test_every_api_command_is_registered() -> None:
    assert {"run", "status", "cancel", "list", "keys"} <= set(SUBCOMMANDS)
