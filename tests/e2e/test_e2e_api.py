"""The API gateway and the CLI in front of the whole running pipeline."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from execmesh.client.http import TERMINAL, parse_sse
from execmesh.settings import PROJECT_ROOT
from tests.e2e.api_client import ApiMesh, start_api_mesh

pytestmark = [pytest.mark.services, pytest.mark.node, pytest.mark.e2e]

SUBMIT = "/api/v1/executions"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiMesh]:
    yield from start_api_mesh(tmp_path_factory.mktemp("api-mesh"))


@pytest.fixture(scope="module")
def alice(api: ApiMesh) -> Iterator[httpx.Client]:
    with api.client(api.key("alice")) as client:
        yield client


def submit(client: httpx.Client, script: str, **fields: object) -> str:
    answer = client.post(SUBMIT, json={"language": "python", "script": script, **fields})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def cli(api: ApiMesh, key: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXECMESH_API_URL": api.url, "EXECMESH_API_KEY": key}
    command = [str(Path(sys.executable).parent / "execmesh"), *args]
    return subprocess.run(
        command, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_submission_through_the_api_runs_and_its_result_is_read_back(
    api: ApiMesh, alice: httpx.Client
) -> None:
    execution_id = submit(alice, "import sys; print('out'); print('err', file=sys.stderr)")
    result = api.wait_for(alice, execution_id)
    assert result["status"] == "completed", result
    assert result["result"]["exit_code"] == 0
    assert result["result"]["stdout"]["data"] == "out\n"
    assert result["result"]["stderr"]["data"] == "err\n"
    assert result["started_at"] and result["finished_at"]


def test_the_cli_prints_the_output_and_exits_with_the_programs_exit_code(
    api: ApiMesh, tmp_path: Path
) -> None:
    program = tmp_path / "shout.py"
    program.write_text("import sys\nprint(sys.stdin.read().upper(), end='')\nsys.exit(3)\n")
    stdin = tmp_path / "in.txt"
    stdin.write_text("hello\n")
    done = cli(api, api.key("cli"), "run", str(program), "--stdin", str(stdin), "--timeout", "20")
    assert (done.returncode, done.stdout) == (3, "HELLO\n"), done.stderr


def test_the_cli_runs_the_example(api: ApiMesh) -> None:
    done = cli(api, api.key("cli"), "run", str(PROJECT_ROOT / "examples" / "hello.py"))
    assert done.returncode == 0, done.stderr
    assert "hello" in done.stdout.lower()


def test_the_cli_reports_a_refusal_without_a_traceback(api: ApiMesh, tmp_path: Path) -> None:
    program = tmp_path / "x.py"
    program.write_text("print(1)\n")
    done = cli(api, "em_wrong", "run", str(program))
    assert done.returncode == 2 and "401" in done.stderr and "Traceback" not in done.stderr


def test_the_cli_lists_and_shows_status(api: ApiMesh, tmp_path: Path) -> None:
    key = api.key("lister")
    program = tmp_path / "x.py"
    program.write_text("print(1)\n")
    assert cli(api, key, "run", str(program)).returncode == 0
    listed = cli(api, key, "list")
    assert listed.returncode == 0 and "completed" in listed.stdout
    execution_id = listed.stdout.split()[0]
    assert '"status": "completed"' in cli(api, key, "status", execution_id).stdout


def test_the_live_events_arrive_in_order_and_resume_after_last_event_id(
    api: ApiMesh, alice: httpx.Client
) -> None:
    execution_id = submit(alice, "import time; time.sleep(1); print('done')")
    url = f"{SUBMIT}/{execution_id}/events"
    with alice.stream("GET", url, timeout=90) as response:
        events = list(parse_sse(response.iter_lines()))
    names = [event.event for event in events]
    expected = ["requested", "queued", "accepted", "running", "completed"]
    assert [name for name in expected if name in names] == names, names
    assert {"accepted", "running", "completed"} <= set(names)
    with alice.stream("GET", url, headers={"Last-Event-ID": events[1].id}) as response:
        resumed = list(parse_sse(response.iter_lines()))
    assert [e.id for e in resumed] == [e.id for e in events[2:]]


def test_a_user_has_a_bounded_number_of_live_streams_and_a_closed_one_frees_its_place(
    api: ApiMesh,
) -> None:
    with api.client(api.key("erin")) as erin, contextlib.ExitStack() as streams:
        execution_id = submit(erin, "import time; time.sleep(30)", limits={"timeout_seconds": 60})
        url = f"{SUBMIT}/{execution_id}/events"
        held = [streams.enter_context(erin.stream("GET", url, timeout=90)) for _ in range(3)]
        assert [response.status_code for response in held] == [200, 200, 200]
        refused = erin.get(url)
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_streams"
        held[0].close()  # the client goes away: the API notices and gives the lease back
        deadline = time.monotonic() + 10
        while True:
            with erin.stream("GET", url, timeout=90) as answer:
                if answer.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's lease was not given back"
            time.sleep(0.2)
        assert erin.post(f"{SUBMIT}/{execution_id}/cancel").status_code == 202


def test_output_too_large_to_travel_inline_is_served_by_link(
    api: ApiMesh, alice: httpx.Client
) -> None:
    execution_id = submit(alice, "print('x' * 100000)")
    result = api.wait_for(alice, execution_id)
    stdout = result["result"]["stdout"]
    assert stdout["data"] is None and stdout["size"] == 100001
    assert alice.get(stdout["url"]).content == b"x" * 100000 + b"\n"


def test_a_cancelled_execution_ends_cancelled(api: ApiMesh, alice: httpx.Client) -> None:
    execution_id = submit(alice, "import time; time.sleep(60)", limits={"timeout_seconds": 90})
    deadline = time.monotonic() + 60
    while alice.get(f"{SUBMIT}/{execution_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert alice.post(f"{SUBMIT}/{execution_id}/cancel").status_code == 202
    assert api.wait_for(alice, execution_id, timeout=60)["status"] == "cancelled"
    assert alice.post(f"{SUBMIT}/{execution_id}/cancel").status_code == 409


def test_another_users_execution_is_not_found(api: ApiMesh, alice: httpx.Client) -> None:
    execution_id = submit(alice, "print(1)")
    with api.client(api.key("mallory")) as mallory:
        assert mallory.get(f"{SUBMIT}/{execution_id}").status_code == 404
        assert mallory.post(f"{SUBMIT}/{execution_id}/cancel").status_code == 404


def test_an_unknown_language_never_reaches_the_pipeline(alice: httpx.Client) -> None:
    answer = alice.post(SUBMIT, json={"language": "cobol", "script": "x"})
    assert answer.status_code == 422 and "python" in answer.json()["detail"]


# Last: it stops the broker of the module's mesh.
def test_with_the_broker_down_every_202_still_ends_once_it_is_back(
    api: ApiMesh, alice: httpx.Client
) -> None:
    api.mesh.kill("broker")
    try:
        accepted = [submit(alice, f"print({n})") for n in range(5)]
    finally:
        api.mesh.start("broker")
        api.mesh.wait_ready()
    statuses = {
        execution_id: api.wait_for(alice, execution_id)["status"] for execution_id in accepted
    }
    assert set(statuses.values()) <= TERMINAL
    assert set(statuses.values()) == {"completed"}, statuses
