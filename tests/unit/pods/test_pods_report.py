"""Parsing what the entry point reports: the termination message and the framed pod log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from execmesh.errors import PermanentError
from execmesh.pods.report import (
    EntrypointFailed,
    MalformedReport,
    PodReport,
    parse_pod_report,
)
from tests.support.pod_report import summary as report_summary


def summary(**changes: Any) -> str:
    # Three bytes of stdout by default: what ``framed`` frames.
    return report_summary(**{"stdout_bytes": 3, **changes})


def framed(stdout: bytes = b"hi\n", stderr: bytes = b"", flags: tuple[int, int] = (0, 0)) -> bytes:
    return (
        b"execmesh-output 1\n"
        + b"stdout %d %d\n" % (len(stdout), flags[0])
        + stdout
        + b"\nstderr %d %d\n" % (len(stderr), flags[1])
        + stderr
        + b"\nend\n"
    )


def test_a_well_formed_report_is_parsed_into_its_fields() -> None:
    assert parse_pod_report(summary(), framed()) == PodReport(
        stdout=b"hi\n",
        stderr=b"",
        exit_code=0,
        signal=None,
        timed_out=False,
        build_failed=False,
        wall_ms=12,
        cpu_ms=9,
        peak_memory_bytes=4096,
        stdout_truncated=False,
        stderr_truncated=False,
    )


def test_stream_contents_that_look_like_frames_are_just_bytes() -> None:
    tricky = b"\nend\nstderr 5 0\n\xff\x00execmesh-output 1\n"
    message = summary(stdout_bytes=len(tricky), stderr_bytes=4)
    report = parse_pod_report(message, framed(tricky, b"\n\n\n\n"))
    assert (report.stdout, report.stderr) == (tricky, b"\n\n\n\n")


def test_a_termination_message_as_bytes_is_accepted() -> None:
    assert parse_pod_report(summary().encode(), framed()).stdout == b"hi\n"


def test_truncation_signal_timeout_and_unknown_memory_are_carried() -> None:
    message = summary(
        exit_code=137,
        signal=9,
        timed_out=True,
        peak_memory_bytes=None,
        stdout_truncated=True,
        stderr_bytes=2,
        stderr_truncated=True,
    )
    report = parse_pod_report(message, framed(b"abc", b"de", (1, 1)))
    assert (report.signal, report.timed_out, report.peak_memory_bytes) == (9, True, None)
    assert report.stdout_truncated and report.stderr_truncated


def test_an_entry_point_failure_is_raised_with_its_reason() -> None:
    with pytest.raises(EntrypointFailed) as failure:
        parse_pod_report('{"v":1,"error":"runtime-missing"}\n', b"")
    assert failure.value.reason == "runtime-missing"
    assert isinstance(failure.value, PermanentError)


@pytest.mark.parametrize(
    ("message", "log"),
    [
        pytest.param("", framed(), id="empty message"),
        pytest.param("OOMKilled", framed(), id="message not json"),
        pytest.param("[1]", framed(), id="message not an object"),
        pytest.param(summary(v=2), framed(), id="unknown version"),
        pytest.param(json.dumps({"v": 1}), framed(), id="fields missing"),
        pytest.param(summary(exit_code="0"), framed(), id="exit code a string"),
        pytest.param(summary(exit_code=True), framed(), id="exit code a boolean"),
        pytest.param(summary(timed_out=0), framed(), id="flag an integer"),
        pytest.param(summary(), b"", id="empty log"),
        pytest.param(summary(), b"hi\n", id="log without frames"),
        pytest.param(summary(), framed()[:-1], id="log cut at the end"),
        pytest.param(summary(), framed()[:25], id="log cut inside a stream"),
        pytest.param(summary(), framed() + b"more", id="bytes after the end"),
        pytest.param(summary(), framed().replace(b"stdout 3", b"stdout 9"), id="length too long"),
        pytest.param(summary(), framed().replace(b"stdout 3", b"stdout 2"), id="length too short"),
        pytest.param(summary(), framed().replace(b"stdout 3", b"stdout -3"), id="negative length"),
        pytest.param(summary(), framed().replace(b"3 0", b"3 2"), id="bad truncation flag"),
        pytest.param(summary(), framed().replace(b"stdout", b"stderr", 1), id="streams swapped"),
        pytest.param(summary(stdout_bytes=4), framed(), id="length disagrees with message"),
        pytest.param(summary(stdout_truncated=True), framed(), id="flag disagrees with message"),
    ],
)
def test_garbage_is_refused_with_a_clear_error(message: str, log: bytes) -> None:
    with pytest.raises(MalformedReport):
        parse_pod_report(message, log)
