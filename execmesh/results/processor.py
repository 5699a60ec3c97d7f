"""What the result_processor function does with one event: project it onto the execution."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from execmesh.errors import InvalidEvent
from execmesh.events import ExecutionPayload
from execmesh.mesh import Emission, IncomingEvent
from execmesh.mongo import connect
from execmesh.results.store import ExecutionStore, MongoExecutionStore, record_event
from execmesh.settings import Settings


@dataclass(frozen=True)
class ResultProcessor:
    store: ExecutionStore
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultProcessor:
        store = MongoExecutionStore(connect(settings))
        store.ensure_indexes()
        return cls(store=store)

    def handle(self, event: IncomingEvent) -> list[Emission]:
        if not isinstance(event.payload, ExecutionPayload):
            raise InvalidEvent(f"the result processor does not handle {event.type}")
        return [Emission(p) for p in record_event(self.store, event, self.clock())]
