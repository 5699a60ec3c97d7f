"""execmesh-podexec refuses a launch spec it cannot apply whole, before the program runs.

Each spec here is wrong before its first mount, so podexec runs on the host itself; what a
right spec does inside a sandbox is what the node and attack tests show.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from execmesh.settings import Settings

PODEXEC = Settings.from_env().podexec_path

pytestmark = pytest.mark.skipif(not os.access(PODEXEC, os.X_OK), reason="make setup builds it")


def run(spec: bytes, *argv: str) -> subprocess.CompletedProcess[str]:
    spec_read, spec_write = os.pipe()
    try:
        os.write(spec_write, spec)
        os.close(spec_write)
        command = [str(PODEXEC), *(argv or [str(spec_read)])]
        return subprocess.run(command, capture_output=True, text=True, pass_fds=[spec_read])
    finally:
        os.close(spec_read)


def spec(*fields: str) -> bytes:
    return b"".join(field.encode() + b"\0" for field in fields)


PROGRAM = ("--", "65532", "65532", "", "/bin/echo", "ran")


@pytest.mark.parametrize(
    ("launch", "message"),
    [
        (b"", "no launch spec"),
        (b"--hostname\0x", "not NUL-terminated"),
        (spec("--hostname", "x"), 'no "--"'),
        (spec("--mount-all", *PROGRAM), 'unknown option "--mount-all"'),
        (spec("--tmpfs", "/x"), "--tmpfs needs 2 argument(s)"),
        (spec("--tmpfs", "x", "1024", *PROGRAM), "not an absolute path"),
        (spec("--ro-bind", "/etc", "etc", *PROGRAM), "not an absolute path"),
        (spec("--fsize", "-1", *PROGRAM), "bad file size"),
        (spec("--fsize", "9223372036854775808", *PROGRAM), "bad file size"),
        (spec("--tmpfs", "/x", "--", *PROGRAM), 'bad tmpfs size: "--"'),
        (spec("--setenv", "A=B", "c", *PROGRAM), 'bad name "A=B"'),
        (spec("--", "65532", "65532", ""), "needs UID GID GROUPS PROGRAM"),
        (spec("--", "0", "65532", "", "/bin/echo"), "as root"),
        (spec("--", "65532", "0", "", "/bin/echo"), "as root"),
        (spec("--", "65532", "65532", "1,0", "/bin/echo"), "root group"),
        (spec("--", "65532", "x", "", "/bin/echo"), 'bad gid: "x"'),
    ],
    ids=[
        "empty",
        "unterminated",
        "no-program",
        "unknown-option",
        "missing-operand",
        "relative-tmpfs",
        "relative-bind",
        "negative-size",
        "size-past-long-long",
        "separator-as-operand",
        "env-name",
        "short-program",
        "root-uid",
        "root-gid",
        "root-group",
        "bad-gid",
    ],
)
def test_a_wrong_spec_is_refused_with_125_and_the_program_never_runs(
    launch: bytes, message: str
) -> None:
    result = run(launch)
    assert result.returncode == 125, result
    assert message in result.stderr
    assert "ran" not in result.stdout


def test_podexec_takes_exactly_one_descriptor() -> None:
    for argv in ([], ["3", "4"], ["x"]):
        assert subprocess.run([str(PODEXEC), *argv], capture_output=True).returncode == 125


def test_a_spec_over_the_limit_is_refused() -> None:
    # The node writes while podexec reads: a spec past 1 MiB never fits.
    spec_read, spec_write = os.pipe()
    process = subprocess.Popen(
        [str(PODEXEC), str(spec_read)], pass_fds=[spec_read], stderr=subprocess.PIPE
    )
    os.close(spec_read)
    try:
        with pytest.raises(BrokenPipeError):
            while True:
                os.write(spec_write, b"x" * 65536)
    finally:
        os.close(spec_write)
    assert process.wait() == 125
    assert process.stderr is not None and b"over 1048576 bytes" in process.stderr.read()
