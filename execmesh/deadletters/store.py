"""Dead letters in MongoDB: one document each, claimed for a retry with a lease.

Only single-document atomic updates are used (FerretDB has no transactions). A retry is
claimed by moving the letter to ``retrying`` with ``lease_until``; a dlq instance that dies
mid-retry leaves a lease that expires, and the letter is claimed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from execmesh.deadletters.letter import DeadLetter, State

HISTORY_LIMIT = 20


class DeadLetterStore:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self.collection = collection

    def ensure_indexes(self) -> None:
        self.collection.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)])
        self.collection.create_index([("attributes.type", ASCENDING)])
        self.collection.create_index([("created_at", DESCENDING)])

    def add(self, letter: DeadLetter) -> bool:
        """Store a new dead letter; ``False`` if it is already known (a redelivery)."""
        try:
            self.collection.insert_one(to_document(letter))
        except DuplicateKeyError:
            return False
        return True

    def get(self, letter_id: str) -> DeadLetter | None:
        document = self.collection.find_one({"_id": letter_id})
        return None if document is None else from_document(document)

    def find(
        self, *, state: State | None = None, event_type: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        query: dict[str, Any] = {}
        if state is not None:
            query["state"] = state.value
        if event_type is not None:
            query["attributes.type"] = event_type
        cursor = self.collection.find(query).sort("created_at", DESCENDING).limit(limit)
        return [from_document(d) for d in cursor]

    def claim_due(self, now: datetime, lease: timedelta, limit: int) -> list[DeadLetter]:
        """Claim up to ``limit`` letters due now, including ones whose claimer died."""
        claimed = []
        due = {
            "$or": [
                {"state": State.PENDING.value, "next_attempt_at": {"$lte": now}},
                {"state": State.RETRYING.value, "lease_until": {"$lte": now}},
            ]
        }
        for _ in range(limit):
            document = self.collection.find_one_and_update(
                due,
                {"$set": {"state": State.RETRYING.value, "lease_until": now + lease}},
                sort=[("next_attempt_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if document is None:
                break
            claimed.append(from_document(document))
        return claimed

    def settle(
        self,
        letter: DeadLetter,
        *,
        state: State,
        outcome: str,
        now: datetime,
        next_attempt_at: datetime | None = None,
    ) -> bool:
        """Record one attempt's outcome, if this claim is still ours."""
        entry = {"at": now, "attempt": letter.attempts + 1, "outcome": outcome[:500]}
        update = {
            "$set": {
                "state": state.value,
                "last_error": "" if state is State.DELIVERED else outcome[:4096],
                "next_attempt_at": next_attempt_at or now,
                "lease_until": None,
            },
            "$inc": {"attempts": 1},
            "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}},
        }
        result = self.collection.update_one(
            {"_id": letter.id, "state": State.RETRYING.value, "attempts": letter.attempts},
            update,
        )
        return result.modified_count == 1

    def retry_now(self, query: Mapping[str, Any], now: datetime) -> int:
        """Make matching pending or parked letters due at once; how many were."""
        states = [State.PENDING.value, State.PARKED.value]
        result = self.collection.update_many(
            {**query, "state": {"$in": states}},
            {"$set": {"state": State.PENDING.value, "next_attempt_at": now}},
        )
        return result.matched_count

    def discard(self, letter_id: str) -> bool:
        result = self.collection.update_one(
            {"_id": letter_id, "state": {"$ne": State.RETRYING.value}},
            {"$set": {"state": State.DISCARDED.value}},
        )
        return result.modified_count == 1


def to_document(letter: DeadLetter) -> dict[str, Any]:
    return {
        "_id": letter.id,
        "attributes": dict(letter.attributes),
        "data": letter.data,
        "destination": letter.destination,
        "error_code": letter.error_code,
        "error_data": letter.error_data,
        "created_at": letter.created_at,
        "next_attempt_at": letter.next_attempt_at,
        "state": letter.state.value,
        "attempts": letter.attempts,
        "last_error": letter.last_error,
        "history": list(letter.history),
        "lease_until": None,
    }


def from_document(document: Mapping[str, Any]) -> DeadLetter:
    letter = DeadLetter(
        id=document["_id"],
        attributes=document["attributes"],
        data=document.get("data"),
        destination=document["destination"],
        error_code=document.get("error_code"),
        error_data=document.get("error_data", ""),
        created_at=_utc(document["created_at"]),
        next_attempt_at=_utc(document["next_attempt_at"]),
    )
    return replace(
        letter,
        state=State(document["state"]),
        attempts=int(document.get("attempts", 0)),
        last_error=document.get("last_error", ""),
        history=tuple(document.get("history", ())),
    )


def _utc(value: datetime) -> datetime:
    # pymongo hands back naive datetimes unless the client is tz_aware.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
