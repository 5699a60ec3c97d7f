from __future__ import annotations

from datetime import UTC, datetime

import pytest

from execmesh.admission import Capacity, Coordinator, InMemoryAdmissionStore, ServerLimits
from execmesh.errors import ConfigError
from execmesh.events import (
    ExecutionAccepted,
    ExecutionRejected,
    ExecutionRequested,
    ExecutionSpec,
    Limits,
    PodCreated,
)
from execmesh.mesh import IncomingEvent
from execmesh.pods.runtimes import RuntimeRegistry, cluster_runtimes
from execmesh.settings import Settings

REGISTRY = RuntimeRegistry({"cluster": cluster_runtimes(), "local": ()})
NOW = 1_800_000_000.0
DEFAULT_CAPACITY = Capacity()


def coordinator(capacity: Capacity = DEFAULT_CAPACITY) -> Coordinator:
    return Coordinator(
        store=InMemoryAdmissionStore(capacity),
        server=ServerLimits(),
        resolve=lambda language, version: REGISTRY.resolve(language, version, "cluster"),
        lease_seconds=30,
        clock=lambda: NOW,
    )


def request(execution_id: str, limits: Limits | None = None) -> IncomingEvent:
    payload = ExecutionRequested(
        execution_id=execution_id,
        user_id="alice",
        spec=ExecutionSpec(language="python", version="3.12", script="print(1)"),
        limits=limits,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return IncomingEvent.of(payload, id=f"req-{execution_id}", source="/api")


def test_the_lease_lasts_the_timeout_plus_the_lease_setting() -> None:
    limits = Limits(timeout_seconds=12.5, memory_mb=64, cpu_millis=100, output_bytes=10)

    [emission] = coordinator().handle(request("ex-1", limits))

    assert isinstance(emission.payload, ExecutionAccepted)
    assert emission.payload.lease_expires_at.timestamp() == NOW + 12.5 + 30


def test_a_deployed_coordinators_lease_outlasts_the_sagas_start_up_and_run_deadlines() -> None:
    settings = Settings(saga_startup_seconds=300, saga_grace_seconds=30, lease_seconds=120)

    coord = Coordinator.from_settings(settings)

    # A slot freed before the saga gives up on its run would let the limits be overrun.
    assert coord.lease_seconds == 300 + 30 + 120


def test_the_coordinator_rejection_it_hears_back_does_not_free_a_slot() -> None:
    coord = coordinator(Capacity(max_global=1))
    coord.handle(request("ex-1"))
    coord.handle(request("ex-2"))
    rejected = ExecutionRejected(execution_id="ex-3", user_id="bob", code="x", reason="y")

    emitted = coord.handle(IncomingEvent.of(rejected, id="rej-3", source="/execmesh/coordinator"))

    assert emitted == []
    assert coord.store.usage().running == 1


def test_an_event_the_coordinator_does_not_handle_emits_nothing() -> None:
    created = PodCreated(execution_id="ex-1", namespace="execmesh", pod_name="ex-1")

    assert coordinator().handle(IncomingEvent.of(created, id="p-1", source="/k8s")) == []


def test_an_unknown_pod_backend_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="EXECMESH_POD_BACKEND"):
        Coordinator.from_settings(Settings(pod_backend="mainframe"))
