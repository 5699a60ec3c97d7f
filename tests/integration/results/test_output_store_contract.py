"""One contract for every output store: in-memory and MongoDB (real FerretDB)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.database import Database

from execmesh.errors import PermanentError
from execmesh.results.outputs import (
    InMemoryOutputStore,
    MongoOutputStore,
    OutputStore,
    read_stream,
    stream_output,
)

# Small chunks so that multi-chunk outputs stay fast; one test uses the real chunk size.
CHUNK = 64 * 1024
NOT_UTF8 = b"\xff\xfe\x00caf\xe9 \x80\x81" * 1000


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest) -> Iterator[OutputStore]:
    if request.param == "memory":
        yield InMemoryOutputStore()
        return
    database: Database[dict[str, Any]] = request.getfixturevalue("mongo_database")
    mongo = MongoOutputStore(database, chunk_bytes=CHUNK)
    mongo.ensure_indexes()
    yield mongo


@pytest.mark.parametrize(
    "data",
    [b"", b"hello\n", NOT_UTF8, os.urandom(CHUNK), os.urandom(3 * CHUNK + 17)],
    ids=["empty", "text", "not-utf8", "one-chunk", "several-chunks"],
)
def test_stored_output_loads_back_byte_for_byte(store: OutputStore, data: bytes) -> None:
    ref = store.store_output("exec-1", "stdout", data)
    assert store.load_output(ref) == data


def test_streams_and_executions_are_stored_apart(store: OutputStore) -> None:
    out = store.store_output("exec-1", "stdout", b"out")
    err = store.store_output("exec-1", "stderr", b"err")
    other = store.store_output("exec-2", "stdout", b"other")
    assert len({out, err, other}) == 3
    assert (store.load_output(out), store.load_output(err)) == (b"out", b"err")
    assert store.load_output(other) == b"other"


def test_storing_again_replaces_even_with_fewer_chunks(store: OutputStore) -> None:
    store.store_output("exec-1", "stdout", os.urandom(4 * CHUNK))
    ref = store.store_output("exec-1", "stdout", b"short")
    assert store.load_output(ref) == b"short"


def test_an_unknown_ref_is_a_permanent_error(store: OutputStore) -> None:
    with pytest.raises(PermanentError):
        store.load_output("exec-9/stdout")


def test_deleted_outputs_are_gone(store: OutputStore) -> None:
    ref = store.store_output("exec-1", "stderr", os.urandom(2 * CHUNK))
    kept = store.store_output("exec-2", "stderr", b"kept")
    store.delete_outputs("exec-1")
    with pytest.raises(PermanentError):
        store.load_output(ref)
    assert store.load_output(kept) == b"kept"


def test_an_unknown_stream_is_refused(store: OutputStore) -> None:
    with pytest.raises(ValueError):
        store.store_output("exec-1", "stdlog", b"x")


def test_large_non_utf8_output_round_trips_through_the_claim_check(store: OutputStore) -> None:
    data = NOT_UTF8 * 20  # about 200 KiB: over the inline limit, not valid UTF-8
    output = stream_output(store, "exec-1", "stdout", data, truncated=True)
    assert output.ref is not None and output.data == ""
    assert (output.size, output.truncated) == (len(data), True)
    assert read_stream(store, output) == data


@pytest.mark.services
def test_output_over_a_document_s_size_limit_round_trips(
    mongo_database: Database[dict[str, Any]],
) -> None:
    store = MongoOutputStore(mongo_database)
    data = os.urandom(17 * 1024 * 1024)  # over MongoDB's 16 MiB document limit
    ref = store.store_output("exec-big", "stdout", data)
    assert store.load_output(ref) == data
