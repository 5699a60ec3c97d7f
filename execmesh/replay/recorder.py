"""The recorder's writes, grouped: concurrent deliveries share one ``insert_many``.

Every event of the mesh reaches the recorder, one HTTP request each. One insert per event
costs a FerretDB (SQLite) transaction each: about 10 inserts/s on a busy 2-core box, where
one batch of 100 costs about as much as three single inserts. So each request hands its
document to a writer thread and waits for the batch that carries it: the request still
answers only once its event is stored (or fails with it, and the broker retries), and a
batch takes whatever arrived while the previous one was being written.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, PyMongoError

from execmesh.errors import TransientError
from execmesh.replay.eventstore import StoredEvent, to_document

log = logging.getLogger(__name__)

MAX_BATCH = 500
DUPLICATE_KEY = 11000
# Longer than any batch takes on a sane store; a request waiting past it is retried.
WAIT_SECONDS = 30.0


class GroupRecorder:
    def __init__(self, collection: Collection[dict[str, Any]], max_batch: int = MAX_BATCH) -> None:
        self.collection = collection
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], Future[bool]]] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_forever, name="recorder", daemon=True)
        self._writer.start()

    def record(self, event: StoredEvent) -> bool:
        """Store ``event`` with whatever else is waiting; ``False`` if it was already stored."""
        done: Future[bool] = Future()
        self._queue.put((to_document(event), done))
        try:
            return done.result(timeout=WAIT_SECONDS)
        except TimeoutError as error:
            raise TransientError(f"recording {event.type} {event.id}: timed out") from error

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[tuple[dict[str, Any], Future[bool]]]) -> None:
        duplicates: set[int] = set()
        try:
            self.collection.insert_many([document for document, _ in batch], ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            duplicates = {e["index"] for e in errors if e.get("code") == DUPLICATE_KEY}
            if len(duplicates) < len(errors):
                self._fail(batch, error)
                return
        except PyMongoError as error:
            self._fail(batch, error)
            return
        for index, (_, done) in enumerate(batch):
            done.set_result(index not in duplicates)

    def _fail(self, batch: list[tuple[dict[str, Any], Future[bool]]], error: Exception) -> None:
        # The inserts that did succeed are found as duplicates when the broker retries.
        log.warning("recording a batch of %d failed: %s", len(batch), error)
        for _, done in batch:
            done.set_exception(TransientError(f"recording events: {error}"))
