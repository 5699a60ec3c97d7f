"""What the server allows: a request checked against its limits, with no I/O.

``check_request`` either gives the effective limits and the canonical spec of a request, or a
``Rejection`` with a stable code and a reason meant for the user. Asking for more than the
server allows is refused, not silently capped: a program quietly given less memory or time
than it asked for fails in ways its author cannot explain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from execmesh.errors import PermanentError
from execmesh.events import MAX_STDIN_BYTES, ExecutionRequested, ExecutionSpec, Limits
from execmesh.settings import Settings

# The smallest pod the executor builds (see execmesh.pods.manifest.Limits).
MIN_MEMORY_MB = 16
MIN_CPU_MILLIS = 10


class ResolvedRuntime(Protocol):
    @property
    def language(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def min_memory_bytes(self) -> int: ...

    @property
    def min_timeout_seconds(self) -> float: ...


# (language, version) -> the runtime, or a PermanentError naming what is available.
RuntimeResolver = Callable[[str, str], ResolvedRuntime]


@dataclass(frozen=True)
class Rejection:
    code: str
    reason: str


@dataclass(frozen=True)
class Admissible:
    """A valid request: the spec with its canonical language and version, and its limits."""

    spec: ExecutionSpec
    limits: Limits


DEFAULT_LIMITS = Limits(timeout_seconds=10.0, memory_mb=256, cpu_millis=500, output_bytes=1 << 20)


@dataclass(frozen=True)
class ServerLimits:
    max_timeout_seconds: float = 300.0
    max_memory_mb: int = 1024
    max_cpu_millis: int = 2000
    max_output_bytes: int = 4 * 1024 * 1024
    max_script_bytes: int = 32 * 1024
    default: Limits = DEFAULT_LIMITS

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        # A request the budget can never hold would wait in the queue forever.
        server = cls(
            max_timeout_seconds=settings.max_timeout_seconds,
            max_memory_mb=min(settings.max_memory_mb, settings.memory_budget_mb),
            max_cpu_millis=min(settings.max_cpu_millis, settings.cpu_budget_millis),
            max_output_bytes=settings.max_output_bytes,
            max_script_bytes=settings.max_script_bytes,
            default=Limits(
                timeout_seconds=settings.default_timeout_seconds,
                memory_mb=settings.default_memory_mb,
                cpu_millis=settings.default_cpu_millis,
                output_bytes=settings.default_output_bytes,
            ),
        )
        if check_limits(server.default, server) is not None:
            raise ValueError(f"default limits {server.default} exceed the server maximums")
        return server


def check_request(
    request: ExecutionRequested, server: ServerLimits, resolve: RuntimeResolver
) -> Admissible | Rejection:
    spec = request.spec
    try:
        runtime = resolve(spec.language, spec.version)
    except PermanentError as error:
        return Rejection("unknown_runtime", str(error))
    # The model bounds stdin in characters; what travels and fills the pod's ConfigMap is bytes.
    too_large = _over_bytes("script", "the script", spec.script, server.max_script_bytes) or (
        _over_bytes("stdin", "stdin", spec.stdin or "", MAX_STDIN_BYTES)
    )
    if too_large is not None:
        return too_large
    limits = request.limits or defaults_for(runtime, server)
    refused = check_limits(limits, server) or check_runtime_needs(limits, runtime)
    if refused is not None:
        return refused
    canonical = spec.model_copy(update={"language": runtime.language, "version": runtime.version})
    return Admissible(canonical, limits)


def defaults_for(runtime: ResolvedRuntime, server: ServerLimits) -> Limits:
    """The server's default limits, raised to what the runtime needs (a compiler, say)."""
    needed_mb = -(-runtime.min_memory_bytes // (1024 * 1024))
    return server.default.model_copy(
        update={
            "memory_mb": min(max(server.default.memory_mb, needed_mb), server.max_memory_mb),
            "timeout_seconds": min(
                max(server.default.timeout_seconds, runtime.min_timeout_seconds),
                server.max_timeout_seconds,
            ),
        }
    )


def check_runtime_needs(limits: Limits, runtime: ResolvedRuntime) -> Rejection | None:
    needed_mb = -(-runtime.min_memory_bytes // (1024 * 1024))
    if limits.memory_mb < needed_mb:
        return _too("memory", limits.memory_mb, "at least", needed_mb, " MB")
    if limits.timeout_seconds < runtime.min_timeout_seconds:
        return _too("timeout", limits.timeout_seconds, "at least", runtime.min_timeout_seconds, "s")
    return None


def check_limits(limits: Limits, server: ServerLimits) -> Rejection | None:
    if limits.timeout_seconds > server.max_timeout_seconds:
        return _too("timeout", limits.timeout_seconds, "at most", server.max_timeout_seconds, "s")
    if limits.memory_mb > server.max_memory_mb:
        return _too("memory", limits.memory_mb, "at most", server.max_memory_mb, " MB")
    if limits.memory_mb < MIN_MEMORY_MB:
        return _too("memory", limits.memory_mb, "at least", MIN_MEMORY_MB, " MB")
    if limits.cpu_millis > server.max_cpu_millis:
        return _too("cpu", limits.cpu_millis, "at most", server.max_cpu_millis, " millicores")
    if limits.cpu_millis < MIN_CPU_MILLIS:
        return _too("cpu", limits.cpu_millis, "at least", MIN_CPU_MILLIS, " millicores")
    if limits.output_bytes > server.max_output_bytes:
        return _too("output", limits.output_bytes, "at most", server.max_output_bytes, " bytes")
    return None


def _too(what: str, asked: float, bound: str, allowed: float, unit: str) -> Rejection:
    code = f"{what}_too_{'large' if bound == 'at most' else 'small'}"
    return Rejection(code, f"{what} limit {_n(asked)}{unit} asked; {bound} {_n(allowed)}{unit}")


def _n(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _over_bytes(name: str, label: str, text: str, limit: int) -> Rejection | None:
    size = len(text.encode("utf-8"))
    if size <= limit:
        return None
    return Rejection(f"{name}_too_large", f"{label} is {size} bytes; at most {limit} are allowed")
