"""Single executions through the whole pipeline: broker, functions, node, sandbox, stores."""

from __future__ import annotations

import time

import pytest

from execmesh.events import Limits
from execmesh.pods.runtimes import available
from tests.e2e.mesh import Mesh

pytestmark = [pytest.mark.services, pytest.mark.node, pytest.mark.e2e]

HELLO = {
    "python": 'print("hello from python")',
    "node": 'console.log("hello from node")',
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello from go") }\n',
    "ruby": 'puts "hello from ruby"',
    "bash": 'echo "hello from bash"',
}
PYTHON = next(r.version for r in available("local") if r.language == "python")
COMPILE_LIMITS = Limits(timeout_seconds=240, memory_mb=1024, cpu_millis=2000, output_bytes=1 << 20)


def stdout(document: dict) -> str:  # type: ignore[type-arg]
    return str(document["result"]["stdout"]["data"])


@pytest.mark.parametrize("runtime", available("local"), ids=lambda r: f"{r.language}-{r.version}")
def test_hello_world_runs_in_every_installed_language(mesh: Mesh, runtime: object) -> None:
    language, version = runtime.language, runtime.version  # type: ignore[attr-defined]
    # Go compiles its runtime into an empty build cache first: about 25 s at the default
    # half core on a 2-core box. Two cores and a long timeout keep a slower machine green.
    limits = COMPILE_LIMITS if language == "go" else None
    execution_id = mesh.submit(language, version, HELLO[language], limits=limits)
    document = mesh.wait_for(execution_id, timeout=300)
    assert document["status"] == "completed", document
    assert document["result"]["exit_code"] == 0
    assert stdout(document) == f"hello from {language}\n"


def test_a_non_zero_exit_is_a_completed_run_with_its_exit_code(mesh: Mesh) -> None:
    document = mesh.wait_for(mesh.submit("python", PYTHON, "import sys; sys.exit(7)"))
    assert (document["status"], document["result"]["exit_code"]) == ("completed", 7)


def test_stdin_reaches_the_program(mesh: Mesh) -> None:
    script = "import sys; print(sys.stdin.read().upper(), end='')"
    document = mesh.wait_for(mesh.submit("python", PYTHON, script, stdin="shout\n"))
    assert stdout(document) == "SHOUT\n"


def test_a_syntax_error_is_reported_on_stderr_with_a_failing_exit(mesh: Mesh) -> None:
    document = mesh.wait_for(mesh.submit("python", PYTHON, "def broken(:\n"))
    assert document["status"] == "completed"
    assert document["result"]["exit_code"] == 1
    assert "SyntaxError" in document["result"]["stderr"]["data"]


def test_a_run_past_its_timeout_ends_timed_out(mesh: Mesh) -> None:
    limits = Limits(timeout_seconds=1, memory_mb=128, cpu_millis=500, output_bytes=1 << 20)
    execution_id = mesh.submit("python", PYTHON, "import time; time.sleep(60)", limits=limits)
    assert mesh.wait_for(execution_id, timeout=60)["status"] == "timed_out"


def test_a_run_past_its_memory_limit_fails_as_oom_killed(mesh: Mesh) -> None:
    limits = Limits(timeout_seconds=20, memory_mb=64, cpu_millis=1000, output_bytes=1 << 20)
    script = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))\n"
    document = mesh.wait_for(mesh.submit("python", PYTHON, script, limits=limits))
    assert document["status"] == "failed"
    assert document["result"]["error_type"] == "oom_killed"


def test_output_over_the_cap_is_truncated_and_flagged(mesh: Mesh) -> None:
    limits = Limits(timeout_seconds=20, memory_mb=128, cpu_millis=1000, output_bytes=1000)
    script = "print('x' * 100_000)"
    document = mesh.wait_for(mesh.submit("python", PYTHON, script, limits=limits))
    result = document["result"]
    assert document["status"] == "completed"
    assert result["stdout"]["truncated"] is True
    assert result["stdout"]["size"] == 1000


def test_large_output_is_stored_first_and_referenced(mesh: Mesh) -> None:
    script = "print('y' * 200_000)"
    document = mesh.wait_for(mesh.submit("python", PYTHON, script))
    result = document["result"]["stdout"]
    assert result["ref"] is not None
    assert result["size"] == 200_001


def test_a_cancel_while_running_stops_the_program_and_removes_the_pod(mesh: Mesh) -> None:
    script = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    execution_id = mesh.submit("python", PYTHON, script)
    mesh.wait_for(execution_id, statuses={"running"}, timeout=60)
    mesh.cancel(execution_id)
    document = mesh.wait_for(execution_id, timeout=60)
    assert document["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while any(execution_id in p["metadata"]["name"] for p in mesh.pods()):
        assert time.monotonic() < deadline, "the cancelled execution's pod is still there"
        time.sleep(0.2)


def test_an_unknown_runtime_is_rejected_with_what_is_available(mesh: Mesh) -> None:
    document = mesh.wait_for(mesh.submit("cobol", "85", "DISPLAY 'HI'."))
    assert document["status"] == "rejected"
    assert "python" in str(document["result"])
