"""The ``executions`` collection: one document per execution, saved with compare-and-set.

``record_event`` is what the result_processor runs per event: read the document, ``project``
the event onto it, save it if nobody saved another version meanwhile, otherwise read and
project again. So of two terminal events handled at once by two instances, exactly one
becomes the result.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from execmesh.events import ExecutionRequested, Payload
from execmesh.mesh.envelope import IncomingEvent
from execmesh.results.record import ExecutionDocument, project
from execmesh.versioned import VersionConflict, VersionedCollection, read_modify_save

COLLECTION = "executions"


class ExecutionStore(Protocol):
    def get(self, execution_id: str) -> ExecutionDocument | None: ...

    def save(self, document: ExecutionDocument) -> ExecutionDocument:
        """Store ``document`` if its version is still current; returns it with the next version."""
        ...


class InMemoryExecutionStore:
    def __init__(self) -> None:
        self.documents: dict[str, ExecutionDocument] = {}
        self._lock = threading.Lock()

    def get(self, execution_id: str) -> ExecutionDocument | None:
        with self._lock:
            return self.documents.get(execution_id)

    def save(self, document: ExecutionDocument) -> ExecutionDocument:
        with self._lock:
            current = self.documents.get(document.execution_id)
            if (0 if current is None else current.version) != document.version:
                raise VersionConflict(document.execution_id)
            saved = document.model_copy(update={"version": document.version + 1})
            self.documents[document.execution_id] = saved
            return saved


class MongoExecutionStore:
    def __init__(self, database: Database[dict[str, Any]], name: str = COLLECTION) -> None:
        self.documents = VersionedCollection(database, name)

    def ensure_indexes(self) -> None:
        self.documents.ensure_indexes()
        heads = self.documents.heads
        heads.create_index([("user_id", ASCENDING), ("updated_at", DESCENDING)])
        heads.create_index([("status", ASCENDING)])

    def get(self, execution_id: str) -> ExecutionDocument | None:
        document = self.documents.get(execution_id)
        return None if document is None else ExecutionDocument.from_document(document)

    def save(self, document: ExecutionDocument) -> ExecutionDocument:
        key = document.execution_id
        version = self.documents.save(key, document.to_document(), document.version)
        return document.model_copy(update={"version": version})


def record_event(store: ExecutionStore, event: IncomingEvent, now: datetime) -> tuple[Payload, ...]:
    """Project ``event`` onto its execution's document; returns the events to emit."""
    execution_id = getattr(event.payload, "execution_id", None)
    if not isinstance(execution_id, str):
        return ()

    def attempt(read: bool) -> tuple[Payload, ...]:
        projection = project(store.get(execution_id) if read else None, event, now)
        if projection.changed and projection.document is not None:
            store.save(projection.document)
        return projection.emitted

    # The request nearly always comes first (delivery between triggers is unordered).
    starts = isinstance(event.payload, ExecutionRequested)
    return read_modify_save(attempt, f"execution {execution_id}", likely_new=starts)
