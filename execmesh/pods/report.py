"""What an executor pod reports: its termination message and its framed log, parsed.

The entry point (entrypoint.sh) writes a one-line JSON summary as the container's
termination message and both output streams, length-prefixed, as the pod log. Read the log
as bytes (``read_namespaced_pod_log(..., _preload_content=False).data``): the client would
otherwise decode it as UTF-8 and any other bytes the program printed would be lost.

``signal`` is inferred as a shell and the kubelet do: an exit status of 128+N reads as signal
N, so a program that itself exits 137 is reported as killed by SIGKILL. ``timed_out`` is only
set when the entry point's own deadline killed the program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from execmesh.errors import PermanentError

LOG_HEADER = b"execmesh-output 1\n"
STREAMS = ("stdout", "stderr")


class MalformedReport(PermanentError):
    """A termination message or pod log that the entry point cannot have written."""


class EntrypointFailed(PermanentError):
    """The entry point could not run the program: a platform failure, not the program's."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the entry point failed before running the program: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class PodReport:
    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: int | None
    timed_out: bool
    build_failed: bool  # a compiled language's build failed: exit_code and stderr are its
    wall_ms: int
    cpu_ms: int
    peak_memory_bytes: int | None
    stdout_truncated: bool
    stderr_truncated: bool


def parse_pod_report(termination_message: str | bytes, log: bytes) -> PodReport:
    summary = parse_summary(termination_message)
    streams = parse_log(log)
    for name in STREAMS:
        body, truncated = streams[name]
        if len(body) != summary[f"{name}_bytes"] or truncated != summary[f"{name}_truncated"]:
            raise MalformedReport(f"the log's {name} does not match the termination message")
    return PodReport(
        stdout=streams["stdout"][0],
        stderr=streams["stderr"][0],
        exit_code=summary["exit_code"],
        signal=summary["signal"],
        timed_out=summary["timed_out"],
        build_failed=summary["build_failed"],
        wall_ms=summary["wall_ms"],
        cpu_ms=summary["cpu_ms"],
        peak_memory_bytes=summary["peak_memory_bytes"],
        stdout_truncated=summary["stdout_truncated"],
        stderr_truncated=summary["stderr_truncated"],
    )


_SUMMARY_FIELDS: dict[str, tuple[type, ...]] = {
    "exit_code": (int,),
    "signal": (int, type(None)),
    "timed_out": (bool,),
    "build_failed": (bool,),
    "wall_ms": (int,),
    "cpu_ms": (int,),
    "peak_memory_bytes": (int, type(None)),
    "stdout_bytes": (int,),
    "stderr_bytes": (int,),
    "stdout_truncated": (bool,),
    "stderr_truncated": (bool,),
}


def parse_summary(message: str | bytes) -> dict[str, Any]:
    """The termination message's fields, checked; raises EntrypointFailed for its failures."""
    try:
        summary = json.loads(message)
    except ValueError as exc:
        raise MalformedReport(f"termination message is not JSON: {_preview(message)}") from exc
    if not isinstance(summary, dict) or summary.get("v") != 1:
        raise MalformedReport(f"termination message of unknown shape: {_preview(message)}")
    if "error" in summary:
        raise EntrypointFailed(str(summary["error"]))
    for name, types in _SUMMARY_FIELDS.items():
        value = summary.get(name)
        # bool is an int in Python: an int field must not accept true/false.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise MalformedReport(f"termination message field {name!r} is {value!r}")
    return summary


def parse_log(log: bytes) -> dict[str, tuple[bytes, bool]]:
    """Each stream's bytes and truncation flag from the framed pod log."""
    if not log.startswith(LOG_HEADER):
        raise MalformedReport(f"pod log does not start with the frame header: {_preview(log)}")
    position = len(LOG_HEADER)
    streams: dict[str, tuple[bytes, bool]] = {}
    for name in STREAMS:
        end_of_line = log.find(b"\n", position, position + 64)
        fields = log[position:end_of_line].split(b" ") if end_of_line >= 0 else []
        if len(fields) != 3 or fields[0] != name.encode() or fields[2] not in (b"0", b"1"):
            raise MalformedReport(f"bad {name} frame header at byte {position}")
        if not fields[1].isdigit():
            raise MalformedReport(f"bad {name} length {fields[1]!r}")
        start = end_of_line + 1
        end = start + int(fields[1])
        if log[end : end + 1] != b"\n":
            raise MalformedReport(f"{name} frame is shorter than its length")
        streams[name] = (log[start:end], fields[2] == b"1")
        position = end + 1
    if log[position:] != b"end\n":
        raise MalformedReport(f"pod log has no end marker after byte {position}")
    return streams


def _preview(data: str | bytes) -> str:
    return repr(data[:80])
