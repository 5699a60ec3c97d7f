"""The saga of each execution: a pure state machine, its MongoDB store and the deadline check."""

from __future__ import annotations

from execmesh.saga.engine import SagaConfig, SagaService, apply_event, check_deadlines
from execmesh.saga.machine import DeadlineCheck, Phase, Policy, Saga, Step, advance
from execmesh.saga.store import InMemorySagaStore, MongoSagaStore, SagaStore

__all__ = [
    "DeadlineCheck",
    "InMemorySagaStore",
    "MongoSagaStore",
    "Phase",
    "Policy",
    "Saga",
    "SagaConfig",
    "SagaService",
    "SagaStore",
    "Step",
    "advance",
    "apply_event",
    "check_deadlines",
]
