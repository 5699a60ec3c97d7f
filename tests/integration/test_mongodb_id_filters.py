"""Filters on `_id` plus other fields, on the real local MongoDB-compatible server.

The local FerretDB is built with scripts/patches/ferretdb-sqlite-id-lookups.patch, which
narrows any filter with an exact `_id` to that document through the `_id` index and leaves
the rest of the filter to FerretDB's own matching. These are the filters the versioned
store writes with; each must still match only what it says, on every command.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.collection import Collection
from pymongo.database import Database

pytestmark = pytest.mark.services


@pytest.fixture
def things(mongo_database: Database[dict[str, Any]]) -> Collection[dict[str, Any]]:
    collection = mongo_database["things"]
    collection.insert_many([{"_id": f"k{n}", "version": n % 7, "tag": "x"} for n in range(300)])
    return collection


def test_find_by_id_and_another_field_matches_only_when_both_do(
    things: Collection[dict[str, Any]],
) -> None:
    assert things.find_one({"_id": "k10", "version": 3}) == {"_id": "k10", "version": 3, "tag": "x"}
    assert things.find_one({"_id": "k10", "version": 4}) is None
    assert things.find_one({"_id": "k10", "version": {"$lt": 3}}) is None
    assert things.count_documents({"_id": "k10", "tag": "x"}) == 1
    assert things.count_documents({"_id": "k10", "tag": "y"}) == 0
    assert things.count_documents({"_id": "nope", "tag": "x"}) == 0


def test_a_conditional_replace_by_id_writes_only_when_the_condition_holds(
    things: Collection[dict[str, Any]],
) -> None:
    refused = things.replace_one({"_id": "k10", "version": {"$lt": 3}}, {"version": 9})
    accepted = things.replace_one({"_id": "k10", "version": {"$lt": 4}}, {"version": 9})

    assert (refused.matched_count, accepted.matched_count) == (0, 1)
    assert things.find_one({"_id": "k10"}) == {"_id": "k10", "version": 9}
    assert things.find_one({"_id": "k11"}) == {"_id": "k11", "version": 4, "tag": "x"}


def test_a_conditional_upsert_by_id_inserts_a_missing_document_once(
    things: Collection[dict[str, Any]],
) -> None:
    things.replace_one({"_id": "new", "version": {"$lt": 1}}, {"version": 1}, upsert=True)
    things.replace_one({"_id": "new", "version": {"$lt": 1}}, {"version": 1}, upsert=False)

    assert list(things.find({"_id": "new"})) == [{"_id": "new", "version": 1}]


def test_a_conditional_delete_by_id_deletes_only_that_document_when_it_matches(
    things: Collection[dict[str, Any]],
) -> None:
    assert things.delete_one({"_id": "k10", "version": {"$lte": 2}}).deleted_count == 0
    assert things.delete_one({"_id": "k10", "version": {"$lte": 3}}).deleted_count == 1
    assert things.delete_many({"_id": "k11", "tag": "x"}).deleted_count == 1

    assert things.count_documents({}) == 298
    assert things.find_one({"_id": "k12"}) is not None


def test_an_update_by_id_and_another_field_changes_only_a_matching_document(
    things: Collection[dict[str, Any]],
) -> None:
    assert things.update_one({"_id": "k10", "tag": "y"}, {"$set": {"tag": "z"}}).matched_count == 0
    assert things.update_one({"_id": "k10", "tag": "x"}, {"$set": {"tag": "z"}}).modified_count == 1
    found = things.find_one_and_update({"_id": "k12", "version": 5}, {"$set": {"tag": "w"}})

    assert found == {"_id": "k12", "version": 5, "tag": "x"}
    assert things.count_documents({"tag": {"$ne": "x"}}) == 2
