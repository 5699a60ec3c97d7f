"""Admission: which executions may run now, which wait, and which are refused."""

from __future__ import annotations

from execmesh.admission.coordinator import Coordinator
from execmesh.admission.limits import Admissible, Rejection, ServerLimits, check_request
from execmesh.admission.redis_store import RedisAdmissionStore
from execmesh.admission.store import (
    Admission,
    AdmissionStore,
    Capacity,
    InMemoryAdmissionStore,
    Outcome,
    Ticket,
    Usage,
)

__all__ = [
    "Admissible",
    "Admission",
    "AdmissionStore",
    "Capacity",
    "Coordinator",
    "InMemoryAdmissionStore",
    "Outcome",
    "RedisAdmissionStore",
    "Rejection",
    "ServerLimits",
    "Ticket",
    "Usage",
    "check_request",
]
