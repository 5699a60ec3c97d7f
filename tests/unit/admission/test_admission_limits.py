from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from execmesh.admission.limits import (
    DEFAULT_LIMITS,
    Admissible,
    Rejection,
    ServerLimits,
    check_request,
)
from execmesh.events import MAX_STDIN_BYTES, ExecutionRequested, ExecutionSpec, Limits
from execmesh.pods.runtimes import RuntimeRegistry, cluster_runtimes
from execmesh.settings import Settings

REGISTRY = RuntimeRegistry({"cluster": cluster_runtimes(), "local": ()})
SERVER = ServerLimits(
    max_timeout_seconds=60,
    max_memory_mb=512,
    max_cpu_millis=1000,
    max_output_bytes=2_000_000,
    max_script_bytes=100,
)


def resolve_on_cluster(language: str, version: str) -> Any:
    return REGISTRY.resolve(language, version, "cluster")


def request(
    language: str = "python",
    version: str = "3.11",
    script: str = "print(1)",
    stdin: str | None = None,
    **limits: float,
) -> ExecutionRequested:
    asked = None
    if limits:
        fields: dict[str, Any] = {
            "timeout_seconds": 5,
            "memory_mb": 128,
            "cpu_millis": 250,
            "output_bytes": 1000,
        }
        asked = Limits(**{**fields, **limits})
    return ExecutionRequested(
        execution_id="ex-1",
        user_id="alice",
        spec=ExecutionSpec(language=language, version=version, script=script, stdin=stdin),
        limits=asked,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("asked", "code"),
    [
        (request(language="cobol"), "unknown_runtime"),
        (request(version="2.7"), "unknown_runtime"),
        (request(script="x" * 101), "script_too_large"),
        (request(script="é" * 51), "script_too_large"),
        # Within the model's count of characters, over the byte limit the name promises.
        (request(stdin="é" * (MAX_STDIN_BYTES // 2 + 1)), "stdin_too_large"),
        (request(timeout_seconds=61), "timeout_too_large"),
        (request(memory_mb=513), "memory_too_large"),
        (request(memory_mb=15), "memory_too_small"),
        (request(cpu_millis=1001), "cpu_too_large"),
        (request(cpu_millis=9), "cpu_too_small"),
        (request(output_bytes=2_000_001), "output_too_large"),
    ],
)
def test_a_request_beyond_the_server_limits_is_rejected_with_a_code(
    asked: ExecutionRequested, code: str
) -> None:
    checked = check_request(asked, SERVER, resolve_on_cluster)

    assert isinstance(checked, Rejection)
    assert checked.code == code


@pytest.mark.parametrize(
    "asked",
    [
        request(script="x" * 100),
        request(stdin="é" * (MAX_STDIN_BYTES // 2)),
        request(timeout_seconds=60, memory_mb=512, cpu_millis=1000, output_bytes=2_000_000),
        request(memory_mb=16, cpu_millis=10),
    ],
)
def test_a_request_at_the_server_limits_is_admissible(asked: ExecutionRequested) -> None:
    assert isinstance(check_request(asked, SERVER, resolve_on_cluster), Admissible)


def test_an_unknown_runtime_is_rejected_with_what_is_available() -> None:
    checked = check_request(request(language="cobol"), SERVER, resolve_on_cluster)

    assert isinstance(checked, Rejection)
    assert "python 3.11" in checked.reason


def test_a_fractional_timeout_is_reported_as_asked() -> None:
    checked = check_request(request(timeout_seconds=60.5), SERVER, resolve_on_cluster)

    assert checked == Rejection("timeout_too_large", "timeout limit 60.5s asked; at most 60s")


def test_a_too_large_limit_is_rejected_with_the_allowed_maximum() -> None:
    checked = check_request(request(memory_mb=600), SERVER, resolve_on_cluster)

    assert checked == Rejection("memory_too_large", "memory limit 600 MB asked; at most 512 MB")


def test_a_request_without_limits_gets_the_server_defaults() -> None:
    checked = check_request(request(), SERVER, resolve_on_cluster)

    assert isinstance(checked, Admissible)
    assert checked.limits == DEFAULT_LIMITS


def test_the_asked_limits_are_kept_as_they_are() -> None:
    checked = check_request(request(timeout_seconds=7, memory_mb=64), SERVER, resolve_on_cluster)

    assert isinstance(checked, Admissible)
    assert (checked.limits.timeout_seconds, checked.limits.memory_mb) == (7, 64)


def test_the_language_and_version_are_made_canonical() -> None:
    checked = check_request(request(language="py", version="3.11.9"), SERVER, resolve_on_cluster)

    assert isinstance(checked, Admissible)
    assert (checked.spec.language, checked.spec.version) == ("python", "3.11")
    assert checked.spec.script == "print(1)"


def test_server_limits_never_allow_more_than_the_budget_can_hold() -> None:
    settings = Settings(max_cpu_millis=4000, cpu_budget_millis=3000, memory_budget_mb=600)

    server = ServerLimits.from_settings(settings)

    assert (server.max_cpu_millis, server.max_memory_mb) == (3000, 600)


def test_defaults_beyond_the_maximums_are_a_configuration_mistake() -> None:
    with pytest.raises(ValueError, match="default limits"):
        ServerLimits.from_settings(Settings(default_timeout_seconds=900))


def test_a_compiled_runtime_gets_defaults_raised_to_what_it_needs() -> None:
    checked = check_request(request(language="go", version="1.23"), SERVER, resolve_on_cluster)
    assert isinstance(checked, Admissible)
    assert checked.limits.memory_mb == 512
    assert checked.limits.timeout_seconds == 60


def test_asking_less_than_the_runtime_needs_is_rejected_before_any_pod_exists() -> None:
    asked = request(language="go", version="1.23", memory_mb=128, timeout_seconds=60)
    checked = check_request(asked, SERVER, resolve_on_cluster)
    assert isinstance(checked, Rejection)
    assert checked.code == "memory_too_small"
    assert "at least 512 MB" in checked.reason
