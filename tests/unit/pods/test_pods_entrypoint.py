"""The entry point run for real, under dash and busybox ash, on a temp dir standing in for the pod.

Its config directory is the builder's ConfigMap data written out as files, as the kubelet
(or the local node) would mount it; paths that a pod has fixed are moved by the env vars.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from execmesh.pods.manifest import ENTRYPOINT_KEY, ExecutionSpec, Limits, configmap_data
from execmesh.pods.report import EntrypointFailed, PodReport, parse_pod_report
from execmesh.pods.runtimes import SANDBOX_PATH, Runtime, default_registry

BUSYBOX = shutil.which("busybox")
SHELLS = [
    pytest.param(["/bin/dash"], id="dash"),
    # As in an Alpine image: busybox's sh and busybox's applets (cat, head, date, setsid...)
    # ahead of anything else on the PATH.
    pytest.param(
        ["busybox-applets"],
        id="busybox",
        marks=pytest.mark.skipif(not BUSYBOX, reason="busybox missing"),
    ),
    pytest.param(["/bin/bash", "--posix"], id="bash"),
]

SH = Runtime(
    language="sh",
    version="1",
    image="test:sh",
    source_file="main.sh",
    run_command=("/bin/sh", "main.sh"),
    version_command=("/bin/sh", "-c", "echo 1"),
)
PYTHON = Runtime(
    language="python",
    version="3",
    image="test:python",
    source_file="main.py",
    run_command=("/usr/bin/python3", "main.py"),
    version_command=("/usr/bin/python3", "--version"),
)
KiB = 1024
GO_SIZED = Limits(timeout_seconds=150, memory_bytes=1024 * KiB * KiB, tmp_bytes=256 * KiB * KiB)
GO_CACHE = Path(tempfile.gettempdir()) / f"execmesh-test-gocache-{os.getuid()}"


@dataclass(frozen=True)
class Run:
    status: int
    log: bytes
    message: str
    seconds: float

    @property
    def report(self) -> PodReport:
        return parse_pod_report(self.message, self.log)


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    argv: list[str] = request.param
    if argv == ["busybox-applets"]:
        applets = tmp_path_factory.getbasetemp() / "busybox-applets"
        if not applets.exists():
            applets.mkdir()
            subprocess.run([str(BUSYBOX), "--install", "-s", str(applets)], check=True)
        return ["/usr/bin/env", f"PATH={applets}:{SANDBOX_PATH}", str(BUSYBOX), "sh"]
    return argv


def run_entrypoint(
    shell: list[str],
    tmp_path: Path,
    script: str,
    *,
    runtime: Runtime = SH,
    stdin: str | None = None,
    args: tuple[str, ...] = (),
    limits: Limits | None = None,
    memory_files: dict[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    # A generous deadline: the machine running the tests may be busy.
    spec = ExecutionSpec(
        "test-1", runtime, script, stdin, args, limits or Limits(timeout_seconds=60)
    )
    config = tmp_path / "config"
    config.mkdir()
    for key, value in configmap_data(spec).items():
        (config / key).write_text(value, "utf-8")
    cgroup = tmp_path / "cgroup"
    for relative, value in (memory_files or {}).items():
        (cgroup / relative).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / relative).write_text(value)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    message_file = tmp_path / "termination-log"
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": str(scratch),
        "LANG": "C.UTF-8",
        "TMPDIR": str(scratch),
        "EXECMESH_DIR": str(config),
        "EXECMESH_TERMINATION_LOG": str(message_file),
        "EXECMESH_SCRATCH": str(scratch),
        "EXECMESH_CGROUP_ROOT": str(cgroup),
    }
    # The runtime's own variables point into the pod's /tmp, which here is the scratch dir;
    # Go's build cache is shared by the tests, as compiling its standard library takes seconds.
    env.update((k, v.replace("/tmp", str(scratch), 1)) for k, v in runtime.env)
    if "GOCACHE" in env:
        env["GOCACHE"] = str(GO_CACHE)
    started = time.monotonic()
    process = subprocess.Popen(
        [*shell, str(config / ENTRYPOINT_KEY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        log, errors = process.communicate(timeout=timeout)
    finally:
        # Whatever the program left behind is in our session's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert errors == b"", "the entry point must not write to its own stderr"
    message = message_file.read_text("utf-8") if message_file.exists() else ""
    return Run(process.returncode, log, message, time.monotonic() - started)


def abandoned(tmp_path: Path) -> bool:
    """Whether the entry point stopped waiting for its readers (after its grace period)."""
    return (tmp_path / "scratch" / ".execmesh" / "abandoned").exists()


def test_stdout_and_stderr_are_recorded_separately(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "echo out; echo err >&2; echo out2")
    assert run.status == 0
    report = run.report
    assert (report.stdout, report.stderr) == (b"out\nout2\n", b"err\n")
    assert (report.exit_code, report.signal, report.timed_out) == (0, None, False)
    assert not report.stdout_truncated and not report.stderr_truncated


def test_a_nonzero_exit_code_is_the_programs_and_the_entry_points(
    shell: list[str], tmp_path: Path
) -> None:
    run = run_entrypoint(shell, tmp_path, "echo bye; exit 3")
    assert run.status == 3
    assert (run.report.exit_code, run.report.signal, run.report.stdout) == (3, None, b"bye\n")


def test_a_program_killed_by_a_signal_reports_the_signal(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "echo before; kill -SEGV $$; echo after")
    assert run.status == 128 + signal.SIGSEGV
    report = run.report
    assert (report.exit_code, report.signal) == (139, signal.SIGSEGV)
    assert report.stdout == b"before\n"


def test_stdin_is_given_to_the_program_byte_for_byte(shell: list[str], tmp_path: Path) -> None:
    data = "line one\nligne deux é\n\tno newline at the end"
    run = run_entrypoint(shell, tmp_path, "cat", stdin=data)
    assert run.report.stdout == data.encode()


def test_without_stdin_the_program_reads_end_of_file(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "cat; echo done")
    assert run.report.stdout == b"done\n"


def test_output_without_a_final_newline_is_kept_exactly(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "printf abc; printf xyz >&2")
    assert (run.report.stdout, run.report.stderr) == (b"abc", b"xyz")


def test_empty_output_is_reported_as_empty(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "true")
    assert (run.report.stdout, run.report.stderr) == (b"", b"")


def test_arbitrary_bytes_survive_both_streams(shell: list[str], tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.stdout.buffer.write(bytes(range(256)) * 40 + b'\\nexecmesh-output 1\\nend\\n')\n"
        "sys.stderr.buffer.write(b'\\xff\\xfe\\x00\\r\\n' * 3)\n"
    )
    run = run_entrypoint(shell, tmp_path, script, runtime=PYTHON)
    assert run.report.stdout == bytes(range(256)) * 40 + b"\nexecmesh-output 1\nend\n"
    assert run.report.stderr == b"\xff\xfe\x00\r\n" * 3


def test_output_over_the_cap_is_cut_at_the_cap_and_flagged(
    shell: list[str], tmp_path: Path
) -> None:
    script = "import sys\nsys.stdout.write('a' * 5000)\nsys.stderr.write('b' * 999)\nsys.exit(4)\n"
    limits = Limits(output_bytes=1000)
    run = run_entrypoint(shell, tmp_path, script, runtime=PYTHON, limits=limits)
    report = run.report
    assert (report.stdout, report.stdout_truncated) == (b"a" * 1000, True)
    assert (report.stderr, report.stderr_truncated) == (b"b" * 999, False)
    assert report.exit_code == 4, "a program over the cap still runs to its own end"


@pytest.mark.parametrize(("size", "truncated"), [(999, False), (1000, False), (1001, True)])
def test_output_at_the_cap_is_not_flagged_and_one_byte_more_is(
    shell: list[str], tmp_path: Path, size: int, truncated: bool
) -> None:
    script = f"import sys\nsys.stdout.write('x' * {size})\n"
    run = run_entrypoint(shell, tmp_path, script, runtime=PYTHON, limits=Limits(output_bytes=1000))
    assert (len(run.report.stdout), run.report.stdout_truncated) == (min(size, 1000), truncated)


def test_a_million_lines_are_all_captured(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "seq 1000000", limits=Limits(output_bytes=4 * KiB * KiB))
    expected = "".join(f"{n}\n" for n in range(1, 1_000_001)).encode()
    assert len(expected) > 4 * KiB * KiB
    assert run.report.stdout == expected[: 4 * KiB * KiB]
    assert run.report.stdout_truncated


def test_a_million_short_lines_under_the_cap_are_not_truncated(
    shell: list[str], tmp_path: Path
) -> None:
    run = run_entrypoint(
        shell, tmp_path, "yes | head -n 1000000", limits=Limits(output_bytes=4 * KiB * KiB)
    )
    assert run.report.stdout == b"y\n" * 1_000_000
    assert not run.report.stdout_truncated


def test_large_output_on_both_streams_at_once_does_not_block(
    shell: list[str], tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "for i in range(20000):\n"
        "    sys.stdout.write('o' * 99 + '\\n')\n"
        "    sys.stderr.write('e' * 99 + '\\n')\n"
    )
    limits = Limits(output_bytes=4 * KiB * KiB)
    run = run_entrypoint(shell, tmp_path, script, runtime=PYTHON, limits=limits, timeout=30)
    assert run.report.stdout == (b"o" * 99 + b"\n") * 20000
    assert run.report.stderr == (b"e" * 99 + b"\n") * 20000


def test_a_program_past_its_timeout_is_killed_and_reported_timed_out(
    shell: list[str], tmp_path: Path
) -> None:
    limits = Limits(timeout_seconds=0.5)
    run = run_entrypoint(shell, tmp_path, "echo started; exec sleep 30", limits=limits)
    report = run.report
    assert (report.timed_out, report.signal, report.stdout) == (True, signal.SIGKILL, b"started\n")
    assert 500 <= report.wall_ms < 10_000
    assert run.seconds < 20


def test_a_program_within_its_timeout_is_not_flagged(shell: list[str], tmp_path: Path) -> None:
    run = run_entrypoint(shell, tmp_path, "sleep 0.2", limits=Limits(timeout_seconds=20))
    assert (run.report.timed_out, run.report.exit_code) == (False, 0)
    assert run.seconds < 15, "the deadline timer (20 s) must not delay the report"


def test_a_process_that_escaped_holding_stdout_does_not_hold_the_report(
    shell: list[str], tmp_path: Path
) -> None:
    # In a session of its own, the leftover escapes the kill of the program's process group.
    script = (
        "setsid sh -c 'echo $$ > ../escaped.tmp && mv ../escaped.tmp ../escaped; exec sleep 60' &"
        "\nwhile [ ! -e ../escaped ]; do sleep 0.01; done; echo main done"
    )
    try:
        run = run_entrypoint(shell, tmp_path, script, timeout=40)
    finally:
        escaped = tmp_path / "scratch" / "escaped"
        if escaped.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(escaped.read_text()), signal.SIGKILL)
    assert (run.report.stdout, run.report.exit_code) == (b"main done\n", 0)
    assert abandoned(tmp_path), "the readers were given up after a grace period"
    assert run.seconds < 30


def test_processes_the_program_left_behind_are_killed_when_it_ends(
    shell: list[str], tmp_path: Path
) -> None:
    if shutil.which("setsid", path=SANDBOX_PATH) is None:
        pytest.skip("without setsid the leftovers live until the pod ends")
    run = run_entrypoint(shell, tmp_path, "sleep 60 & echo $! > ../leftover; exec 1>&- 2>&-")
    assert run.report.exit_code == 0
    assert not abandoned(tmp_path), "no wait for a reader held open by the leftover"
    leftover = int((tmp_path / "scratch" / "leftover").read_text())
    died = dies_soon(leftover)
    if not died:  # still our sleep, alive: do not leave it behind
        os.kill(leftover, signal.SIGKILL)
    assert died, "SIGKILL was sent to the program's whole process group"


def dies_soon(pid: int, seconds: float = 5.0) -> bool:
    """A killed process may need a moment of CPU to exit on a busy machine."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state.startswith(("Z", "X")):
            return True
        time.sleep(0.02)
    return False


def test_a_timeout_kills_the_programs_children_too(shell: list[str], tmp_path: Path) -> None:
    limits = Limits(timeout_seconds=0.5)
    run = run_entrypoint(shell, tmp_path, "sleep 30; echo not reached", limits=limits)
    assert (run.report.timed_out, run.report.stdout) == (True, b"")
    assert not abandoned(tmp_path), "the child holding stdout died with the program"


def test_wall_and_cpu_time_are_measured(shell: list[str], tmp_path: Path) -> None:
    script = (
        "import time\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.3:\n"
        "    pass\n"
        "time.sleep(0.2)\n"
    )
    report = run_entrypoint(shell, tmp_path, script, runtime=PYTHON).report
    assert 300 <= report.cpu_ms < 2000
    assert report.wall_ms >= report.cpu_ms + 150


@pytest.mark.parametrize(
    "files",
    [
        {"memory.peak": "12345678\n"},
        {"memory/memory.max_usage_in_bytes": "12345678\n"},
    ],
    ids=["cgroup-v2", "cgroup-v1"],
)
def test_peak_memory_is_read_from_the_cgroup(
    shell: list[str], tmp_path: Path, files: dict[str, str]
) -> None:
    report = run_entrypoint(shell, tmp_path, "true", memory_files=files).report
    assert report.peak_memory_bytes == 12345678


def test_peak_memory_is_unknown_without_a_readable_cgroup(shell: list[str], tmp_path: Path) -> None:
    report = run_entrypoint(shell, tmp_path, "true", memory_files={"memory.peak": "max\n"}).report
    assert report.peak_memory_bytes is None


def test_arguments_reach_the_program_word_for_word(shell: list[str], tmp_path: Path) -> None:
    args = ("a b", "it's", 'dq"', "$HOME", "`id`", "new\nline", "", "*")
    run = run_entrypoint(shell, tmp_path, 'for a in "$@"; do printf "[%s]" "$a"; done', args=args)
    assert run.report.stdout == "".join(f"[{a}]" for a in args).encode()


def test_the_program_runs_in_a_writable_directory_holding_its_source(
    shell: list[str], tmp_path: Path
) -> None:
    run = run_entrypoint(shell, tmp_path, "ls; echo data > f; cat f")
    assert run.report.stdout == b"main.sh\ndata\n"


def test_a_missing_interpreter_is_a_platform_failure_not_an_exit_code(
    shell: list[str], tmp_path: Path
) -> None:
    runtime = Runtime("x", "1", "x:1", "main.x", ("no-such-interpreter", "main.x"), ("x",))
    run = run_entrypoint(shell, tmp_path, "", runtime=runtime)
    assert run.status == 125
    with pytest.raises(EntrypointFailed) as failure:
        _ = run.report
    assert failure.value.reason == "runtime-missing"


def test_the_termination_message_fits_kubernetes_limit(shell: list[str], tmp_path: Path) -> None:
    limits = Limits(output_bytes=4 * KiB * KiB)
    run = run_entrypoint(shell, tmp_path, "kill -KILL $$", limits=limits)
    assert len(run.message.encode()) < 4096
    assert run.report.signal == signal.SIGKILL


HELLO = {
    "python": "import sys\nprint(sys.stdin.read().upper(), end='')\nsys.exit(7)\n",
    "node": "const fs = require('fs');\n"
    "process.stdout.write(fs.readFileSync(0, 'utf8').toUpperCase());\nprocess.exit(7);\n",
    "ruby": "print STDIN.read.upcase\nexit 7\n",
    "bash": "tr a-z A-Z\nexit 7\n",
    "go": 'package main\nimport (\n"io"\n"os"\n"strings"\n)\n'
    "func main() {\nb, _ := io.ReadAll(os.Stdin)\n"
    "os.Stdout.WriteString(strings.ToUpper(string(b)))\nos.Exit(7)\n}\n",
}


@pytest.mark.parametrize(
    "runtime",
    [pytest.param(r, id=r.key) for r in default_registry().available("local")],
)
def test_every_local_runtime_runs_a_program_through_the_entry_point(
    runtime: Runtime, tmp_path: Path
) -> None:
    # Go compiles its standard library into an empty cache first: seconds, and tens of MB.
    limits = GO_SIZED
    run = run_entrypoint(
        ["/bin/dash"],
        tmp_path,
        HELLO[runtime.language],
        runtime=runtime,
        stdin="hi there",
        limits=limits,
        timeout=200,
    )
    report = run.report
    assert (report.stdout, report.stderr, report.exit_code) == (b"HI THERE", b"", 7)


def test_a_failed_build_reports_the_compilers_output_and_status(tmp_path: Path) -> None:
    go = [r for r in default_registry().available("local") if r.language == "go"]
    if not go:
        pytest.skip("no Go on this machine")
    limits = GO_SIZED
    run = run_entrypoint(
        ["/bin/dash"],
        tmp_path,
        "package main\nfunc main() { x }\n",
        runtime=go[0],
        limits=limits,
        timeout=200,
    )
    report = run.report
    assert (report.build_failed, report.exit_code, report.stdout) == (True, 1, b"")
    assert b"undefined: x" in report.stderr


def test_the_entry_point_is_plain_posix_sh() -> None:
    script = str(Path(__file__).parents[3] / "execmesh" / "pods" / ENTRYPOINT_KEY)
    subprocess.run(["/bin/dash", "-n", script], check=True, timeout=30)
    if shutil.which("busybox"):
        subprocess.run(["busybox", "sh", "-n", script], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", script], check=True, timeout=60)


def _run_with_broken_config(tmp_path: Path, breaks: str) -> Run:
    spec = ExecutionSpec("test-1", SH, "echo hi")
    config = tmp_path / "config"
    config.mkdir()
    for key, value in configmap_data(spec).items():
        (config / key).write_text(value, "utf-8")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if breaks == "config":
        (config / "timeout-seconds").unlink()
    elif breaks == "limit":
        (config / "output-limit-bytes").write_text("lots")
    else:
        (tmp_path / "a-file").write_text("where a directory must go")
        scratch = tmp_path / "a-file" / "scratch"
    message_file = tmp_path / "termination-log"
    env = {
        "PATH": SANDBOX_PATH,
        "EXECMESH_DIR": str(config),
        "EXECMESH_TERMINATION_LOG": str(message_file),
        "EXECMESH_SCRATCH": str(scratch),
    }
    done = subprocess.run(
        ["/bin/dash", str(config / ENTRYPOINT_KEY)], capture_output=True, env=env, timeout=30
    )
    return Run(done.returncode, done.stdout, message_file.read_text(), 0.0)


@pytest.mark.parametrize(
    ("breaks", "reason"),
    [("config", "config-missing"), ("limit", "config-invalid"), ("scratch", "scratch-unwritable")],
)
def test_an_entry_point_that_cannot_start_says_why_with_status_125(
    tmp_path: Path, breaks: str, reason: str
) -> None:
    run = _run_with_broken_config(tmp_path, breaks)
    assert run.status == 125
    with pytest.raises(EntrypointFailed) as failure:
        _ = run.report
    assert failure.value.reason == reason


def test_a_hundred_megabytes_of_output_are_cut_at_the_cap_and_the_program_ends_normally(
    shell: list[str], tmp_path: Path
) -> None:
    script = "head -c 100000000 /dev/zero; head -c 100000000 /dev/zero >&2; echo done >&2"
    run = run_entrypoint(shell, tmp_path, script, timeout=90)
    report = run.report
    assert (report.stdout, report.stdout_truncated) == (b"\0" * 1024 * KiB, True)
    assert (len(report.stderr), report.stderr_truncated) == (1024 * KiB, True)
    assert (report.exit_code, report.signal) == (0, None), "no SIGPIPE for the program"


def test_a_program_that_deletes_the_entry_points_files_still_gets_a_report(
    shell: list[str], tmp_path: Path
) -> None:
    run = run_entrypoint(shell, tmp_path, "echo gone; rm -rf ../.execmesh; exit 4")
    report = run.report
    assert (report.exit_code, report.stdout, report.stdout_truncated) == (4, b"", True)
