"""Results: the ``executions`` documents (status and first terminal result) and stored output."""

from __future__ import annotations

from execmesh.results.outputs import (
    InMemoryOutputStore,
    MongoOutputStore,
    OutputNotFound,
    OutputStore,
    read_stream,
    stream_output,
)
from execmesh.results.record import (
    ExecutionDocument,
    ExecutionResult,
    ExecutionStatus,
    LateResult,
    project,
)
from execmesh.results.store import (
    ExecutionStore,
    InMemoryExecutionStore,
    MongoExecutionStore,
    record_event,
)

__all__ = [
    "ExecutionDocument",
    "ExecutionResult",
    "ExecutionStatus",
    "ExecutionStore",
    "InMemoryExecutionStore",
    "InMemoryOutputStore",
    "LateResult",
    "MongoExecutionStore",
    "MongoOutputStore",
    "OutputNotFound",
    "OutputStore",
    "project",
    "read_stream",
    "record_event",
    "stream_output",
]
