"""Claim check for program output: what does not fit in an event is stored first, then referenced.

The pod_monitor calls ``stream_output`` for each stream: small output travels inline in the
event, larger output goes to the ``outputs`` collection and the event carries its ``ref``.
Readers (the API) call ``read_stream`` and never care which it was.

A stored output is a head document in ``outputs`` (size, chunk count, sha256) plus chunks in
``outputs.chunks``, because a program may write up to 64 MiB and a document holds 16 MiB.
Storing is idempotent: a monitor that restarts stores the same bytes under the same ref.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Protocol

from bson.binary import Binary
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import PyMongoError

from execmesh.errors import PermanentError, TransientError
from execmesh.events import MAX_INLINE_OUTPUT_BYTES, StreamOutput

OUTPUTS = "outputs"
CHUNKS = "outputs.chunks"
CHUNK_BYTES = 1024 * 1024
STREAMS = frozenset({"stdout", "stderr"})


class OutputNotFound(PermanentError):
    """A reference to output that was never stored (or was deleted)."""


class OutputStore(Protocol):
    def store_output(self, execution_id: str, stream: str, data: bytes) -> str:
        """Store ``data`` as the ``stream`` of ``execution_id``; returns its ref."""
        ...

    def load_output(self, ref: str) -> bytes: ...

    def delete_outputs(self, execution_id: str) -> None: ...


def output_ref(execution_id: str, stream: str) -> str:
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}")
    return f"{execution_id}/{stream}"


def stream_output(
    store: OutputStore,
    execution_id: str,
    stream: str,
    data: bytes,
    *,
    truncated: bool = False,
    inline_limit: int = MAX_INLINE_OUTPUT_BYTES,
) -> StreamOutput:
    """The event form of one stream: inline if small, otherwise stored and referenced."""
    if len(data) > inline_limit:
        ref = store.store_output(execution_id, stream, data)
        return StreamOutput(size=len(data), truncated=truncated, ref=ref)
    try:
        return StreamOutput(data=data.decode("utf-8"), size=len(data), truncated=truncated)
    except UnicodeDecodeError:
        text = base64.b64encode(data).decode("ascii")
        return StreamOutput(data=text, encoding="base64", size=len(data), truncated=truncated)


def read_stream(store: OutputStore, output: StreamOutput) -> bytes:
    """The bytes of one stream, wherever they are."""
    if output.ref is not None:
        return store.load_output(output.ref)
    if output.encoding == "base64":
        return base64.b64decode(output.data)
    return output.data.encode("utf-8")


class InMemoryOutputStore:
    def __init__(self) -> None:
        self.outputs: dict[str, bytes] = {}

    def store_output(self, execution_id: str, stream: str, data: bytes) -> str:
        ref = output_ref(execution_id, stream)
        self.outputs[ref] = bytes(data)
        return ref

    def load_output(self, ref: str) -> bytes:
        try:
            return self.outputs[ref]
        except KeyError:
            raise OutputNotFound(f"no stored output {ref!r}") from None

    def delete_outputs(self, execution_id: str) -> None:
        for stream in STREAMS:
            self.outputs.pop(output_ref(execution_id, stream), None)


class MongoOutputStore:
    def __init__(self, database: Database[dict[str, Any]], chunk_bytes: int = CHUNK_BYTES) -> None:
        self.heads = database[OUTPUTS]
        self.chunks = database[CHUNKS]
        self.chunk_bytes = chunk_bytes

    def ensure_indexes(self) -> None:
        self.chunks.create_index([("ref", ASCENDING), ("n", ASCENDING)])
        self.heads.create_index([("execution_id", ASCENDING)])

    def store_output(self, execution_id: str, stream: str, data: bytes) -> str:
        ref = output_ref(execution_id, stream)
        pieces = [data[i : i + self.chunk_bytes] for i in range(0, len(data), self.chunk_bytes)]
        try:
            # Chunks first, head last: a reader never finds a head whose chunks are missing.
            for n, piece in enumerate(pieces):
                self.chunks.replace_one(
                    {"_id": f"{ref}#{n}"},
                    {"ref": ref, "n": n, "data": Binary(piece)},
                    upsert=True,
                )
            self.heads.replace_one(
                {"_id": ref},
                {
                    "execution_id": execution_id,
                    "stream": stream,
                    "size": len(data),
                    "chunks": len(pieces),
                    "sha256": hashlib.sha256(data).hexdigest(),
                },
                upsert=True,
            )
        except PyMongoError as error:
            raise TransientError(f"storing output {ref}: {error}") from error
        return ref

    def load_output(self, ref: str) -> bytes:
        try:
            head = self.heads.find_one({"_id": ref})
            if head is None:
                raise OutputNotFound(f"no stored output {ref!r}")
            cursor = self.chunks.find({"ref": ref, "n": {"$lt": head["chunks"]}}).sort("n")
            data = b"".join(bytes(chunk["data"]) for chunk in cursor)
        except PyMongoError as error:
            raise TransientError(f"loading output {ref}: {error}") from error
        if hashlib.sha256(data).hexdigest() != head["sha256"]:
            # Only while the same ref is being stored again; the next read sees it whole.
            raise TransientError(f"output {ref} is being rewritten")
        return data

    def delete_outputs(self, execution_id: str) -> None:
        refs = [output_ref(execution_id, stream) for stream in sorted(STREAMS)]
        try:
            self.heads.delete_many({"_id": {"$in": refs}})
            self.chunks.delete_many({"ref": {"$in": refs}})
        except PyMongoError as error:
            raise TransientError(f"deleting outputs of {execution_id}: {error}") from error
