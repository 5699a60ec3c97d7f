"""Compare-and-set documents on the real FerretDB: the lock the saga and results stores use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from execmesh.settings import Settings
from execmesh.versioned import VersionConflict, VersionedCollection

pytestmark = pytest.mark.services


@pytest.fixture
def documents(mongo_database: Database[dict[str, Any]]) -> VersionedCollection:
    collection = VersionedCollection(mongo_database, "things")
    collection.ensure_indexes()
    return collection


def test_a_saved_document_reads_back_with_its_version(documents: VersionedCollection) -> None:
    assert documents.get("k") is None
    assert documents.save("k", {"colour": "red"}, 0) == 1
    assert documents.save("k", {"colour": "blue"}, 1) == 2
    assert documents.get("k") == {"_id": "k", "colour": "blue", "version": 2}


def test_two_writers_of_one_version_one_wins(documents: VersionedCollection) -> None:
    documents.save("k", {"n": 0}, 0)
    documents.save("k", {"n": 1}, 1)
    with pytest.raises(VersionConflict):
        documents.save("k", {"n": 99}, 1)
    assert documents.get("k") == {"_id": "k", "n": 1, "version": 2}


def test_a_head_left_behind_is_read_through_and_repaired(documents: VersionedCollection) -> None:
    documents.save("k", {"n": 1, "due": True}, 0)
    documents.save("k", {"n": 2, "due": True}, 1, refresh_head=False)
    documents.save("k", {"n": 3, "due": False}, 2, refresh_head=False)
    assert [h["n"] for h in documents.find_heads({"due": True}, [("_id", 1)], 10)] == [1]
    latest = documents.get("k")
    assert latest is not None and (latest["n"], latest["version"]) == (3, 3)
    assert documents.find_heads({"due": True}, [("_id", 1)], 10) == []


def test_a_version_saved_before_its_head_existed_is_found(documents: VersionedCollection) -> None:
    # A writer that died between its two writes leaves a version and no head.
    documents.save("k", {"n": 1}, 0, refresh_head=False)
    latest = documents.get("k")
    assert latest is not None and latest["n"] == 1
    assert documents.save("k", {"n": 2}, 1) == 2


def test_deleted_documents_are_gone_with_their_versions(documents: VersionedCollection) -> None:
    for key in ("a", "b"):
        documents.save(key, {"n": 1}, 0)
        documents.save(key, {"n": 2}, 1, refresh_head=False)
    assert documents.delete(["a"]) == 1
    assert documents.get("a") is None
    assert documents.versions.count_documents({"key": "a"}) == 0
    assert documents.get("b") is not None


def test_racing_writers_never_lose_an_increment(documents: VersionedCollection) -> None:
    documents.save("counter", {"n": 0}, 0)
    conflicts = []

    def worker() -> None:
        for _ in range(10):
            for _attempt in range(500):
                current = documents.get("counter")
                assert current is not None
                try:
                    documents.save("counter", {"n": current["n"] + 1}, current["version"])
                    break
                except VersionConflict:
                    conflicts.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    final = documents.get("counter")
    assert final is not None and final["n"] == 40 and final["version"] == 41
    assert conflicts, "the writers never raced: the test proves nothing"


def test_only_documents_that_pass_head_if_have_a_head(
    mongo_database: Database[dict[str, Any]],
) -> None:
    documents = VersionedCollection(
        mongo_database, "open", head_fields=("due",), head_if=lambda d: d.get("due") is not None
    )
    documents.save("k", {"due": 5, "body": "x" * 100}, 0)
    assert list(documents.heads.find()) == [{"_id": "k", "due": 5, "version": 1}]
    documents.save("k", {"body": "done"}, 1)
    assert list(documents.heads.find()) == []
    assert documents.get("k") == {"_id": "k", "body": "done", "version": 2}
    assert list(documents.heads.find()) == []  # reading does not bring the head back


class Reads(monitoring.CommandListener):
    """The collections each ``find`` of a client read, in order."""

    def __init__(self) -> None:
        self.collections: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.collections.append(str(event.command["find"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
def reads() -> Reads:
    return Reads()


@pytest.fixture
def watched(
    settings: Settings, mongo_database: Database[dict[str, Any]], reads: Reads
) -> Iterator[Database[dict[str, Any]]]:
    """``mongo_database`` through a client of its own that counts its reads."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongodb_url, event_listeners=[reads], tz_aware=True
    )
    try:
        yield client[mongo_database.name]
    finally:
        client.close()


def sagas_like(
    database: Database[dict[str, Any]], remembered_keys: int = 256
) -> VersionedCollection:
    return VersionedCollection(
        database,
        "sagas_like",
        head_fields=("due",),
        head_if=lambda d: d.get("due") is not None,
        remembered_keys=remembered_keys,
    )


def test_a_key_read_or_saved_here_is_read_again_with_one_probe(
    watched: Database[dict[str, Any]], reads: Reads
) -> None:
    documents = sagas_like(watched)
    documents.save("k", {"due": 5, "n": 1}, 0)
    reads.collections.clear()

    assert documents.get("k") == {"_id": "k", "due": 5, "n": 1, "version": 1}
    assert reads.collections == ["sagas_like.versions"]  # is there a version 2? no

    documents.save("k", {"due": 5, "n": 2}, 1, refresh_head=False)  # the head reads the same
    reads.collections.clear()
    assert documents.get("k") == {"_id": "k", "due": 5, "n": 2, "version": 2}
    assert reads.collections == ["sagas_like.versions"]


def test_a_version_saved_by_another_process_is_read_and_its_head_repaired(
    mongo_database: Database[dict[str, Any]],
) -> None:
    here, there = sagas_like(mongo_database), sagas_like(mongo_database)
    here.save("k", {"due": 5, "n": 1}, 0)
    assert here.get("k") == {"_id": "k", "due": 5, "n": 1, "version": 1}
    # Another process saves a version and dies before its head.
    there.save("k", {"due": 9, "n": 2}, 1, refresh_head=False)

    assert here.get("k") == {"_id": "k", "due": 9, "n": 2, "version": 2}
    assert list(here.heads.find()) == [{"_id": "k", "due": 9, "version": 2}]


def test_a_quiet_save_that_changes_the_head_is_not_remembered(
    watched: Database[dict[str, Any]], reads: Reads
) -> None:
    documents = sagas_like(watched)
    documents.save("k", {"due": 5}, 0)
    documents.save("k", {"due": 7}, 1, refresh_head=False)  # as if the head write was lost
    reads.collections.clear()

    assert documents.get("k") == {"_id": "k", "due": 7, "version": 2}
    assert reads.collections[0] == "sagas_like"  # read from the head on: it was repaired
    assert list(documents.heads.find()) == [{"_id": "k", "due": 7, "version": 2}]


def test_only_the_most_recent_keys_are_remembered(
    watched: Database[dict[str, Any]], reads: Reads
) -> None:
    documents = sagas_like(watched, remembered_keys=2)
    for key in ("a", "b", "c"):
        documents.save(key, {"due": 1}, 0)
    reads.collections.clear()

    documents.get("c")
    documents.get("a")
    assert reads.collections == [
        "sagas_like.versions",  # c: one probe
        "sagas_like",  # a, forgotten: the head, its version, the probe for the next
        "sagas_like.versions",
        "sagas_like.versions",
    ]


def test_deleted_keys_are_forgotten(documents: VersionedCollection) -> None:
    documents.save("k", {"n": 1}, 0)
    assert documents.get("k") is not None
    documents.delete(["k"])
    assert documents.get("k") is None
