"""Compare-and-set documents on the real FerretDB: the lock the saga and results stores use."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo.database import Database

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
