"""Dead letters in MongoDB, one versioned document each, claimed for a retry with a lease.

Every change is a compare-and-set save of the next version (``execmesh.versioned``): the
insert of a unique ``<letter id>#<version>`` is the one check that is atomic on MongoDB and on
FerretDB 1.x alike, whose conditional updates are not (two dlq replicas would both claim the
same letter). A claim saves the letter as ``retrying`` with ``lease_until``; a dlq instance
that dies mid-retry leaves a lease that expires, and the letter is claimed again. Settling
saves from the claimed version, so a claimer that lost its lease can no longer count its
attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from execmesh.deadletters.letter import DeadLetter, State
from execmesh.versioned import VersionConflict, VersionedCollection, retry_on_conflict

COLLECTION = "dead_letters"
HISTORY_LIMIT = 20
# Due letters looked at per claim: others racing for the first ones leave these.
CLAIM_SCAN = 10
_RETRYABLE = (State.PENDING, State.PARKED)


class DeadLetterStore:
    def __init__(self, database: Database[dict[str, Any]], name: str = COLLECTION) -> None:
        self.documents = VersionedCollection(database, name)

    def ensure_indexes(self) -> None:
        self.documents.ensure_indexes()
        # One index on the heads: every index slows every write on FerretDB.
        self.documents.heads.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)])

    def add(self, letter: DeadLetter) -> bool:
        """Store a new dead letter; ``False`` if it is already known (a redelivery)."""
        try:
            self.documents.save(letter.id, to_document(letter), 0)
        except VersionConflict:
            return False
        return True

    def get(self, letter_id: str) -> DeadLetter | None:
        document = self.documents.get(letter_id)
        return None if document is None else from_document(document)

    def find(
        self,
        *,
        state: State | None = None,
        event_type: str | None = None,
        query: Mapping[str, Any] | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Letters newest first; heads may lag, so each is read at its latest version."""
        selection: dict[str, Any] = dict(query or {})
        if state is not None:
            selection["state"] = state.value
        if event_type is not None:
            selection["attributes.type"] = event_type
        heads = self.documents.find_heads(selection, [("created_at", DESCENDING)], limit)
        letters = [self.get(head["_id"]) for head in heads]
        return [
            letter
            for letter in letters
            if letter is not None and (state is None or letter.state is state)
        ]

    def claim_due(self, now: datetime, lease: timedelta, limit: int) -> list[DeadLetter]:
        """Claim up to ``limit`` letters due now, including ones whose claimer died."""
        claimed: list[DeadLetter] = []
        while len(claimed) < limit and (letter := self.claim_next(now, lease)) is not None:
            claimed.append(letter)
        return claimed

    def claim_next(self, now: datetime, lease: timedelta) -> DeadLetter | None:
        """Claim the letter due first; ``None`` when none is due (or others won them all)."""
        due = {
            "$or": [
                {"state": State.PENDING.value, "next_attempt_at": {"$lte": now}},
                {"state": State.RETRYING.value, "lease_until": {"$lte": now}},
            ]
        }
        heads = self.documents.find_heads(due, [("next_attempt_at", ASCENDING)], CLAIM_SCAN)
        for head in heads:
            letter = self.get(head["_id"])
            if letter is None or not is_due(letter, now):
                continue
            claim = replace(letter, state=State.RETRYING, lease_until=now + lease)
            try:
                version = self.documents.save(letter.id, to_document(claim), letter.version)
            except VersionConflict:
                continue  # another dlq instance claimed it (or an admin changed it) first
            return replace(claim, version=version)
        return None

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
        settled = replace(
            letter,
            state=state,
            attempts=letter.attempts + 1,
            last_error="" if state is State.DELIVERED else outcome[:4096],
            next_attempt_at=next_attempt_at or now,
            lease_until=None,
            history=(*letter.history, entry)[-HISTORY_LIMIT:],
        )
        try:
            self.documents.save(letter.id, to_document(settled), letter.version)
        except VersionConflict:
            return False
        return True

    def retry_now(self, query: Mapping[str, Any], now: datetime, limit: int = 1000) -> int:
        """Make matching pending or parked letters due at once; how many were."""
        selection = {**query, "state": {"$in": [s.value for s in _RETRYABLE]}}
        heads = self.documents.find_heads(selection, [("created_at", ASCENDING)], limit)
        return sum(
            self._change(
                head["_id"],
                lambda letter: letter.state in _RETRYABLE,
                lambda letter: replace(letter, state=State.PENDING, next_attempt_at=now),
            )
            for head in heads
        )

    def discard(self, letter_id: str) -> bool:
        return self._change(
            letter_id,
            lambda letter: letter.state is not State.RETRYING,
            lambda letter: replace(letter, state=State.DISCARDED),
        )

    def _change(
        self,
        letter_id: str,
        allowed: Callable[[DeadLetter], bool],
        change: Callable[[DeadLetter], DeadLetter],
    ) -> bool:
        def attempt() -> bool:
            letter = self.get(letter_id)
            if letter is None or not allowed(letter):
                return False
            self.documents.save(letter_id, to_document(change(letter)), letter.version)
            return True

        return retry_on_conflict(attempt, f"dead letter {letter_id}")


def is_due(letter: DeadLetter, now: datetime) -> bool:
    if letter.state is State.PENDING:
        return letter.next_attempt_at <= now
    return letter.state is State.RETRYING and (
        letter.lease_until is None or letter.lease_until <= now
    )


def to_document(letter: DeadLetter) -> dict[str, Any]:
    return {
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
        "lease_until": letter.lease_until,
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
    lease_until = document.get("lease_until")
    return replace(
        letter,
        state=State(document["state"]),
        attempts=int(document.get("attempts", 0)),
        last_error=document.get("last_error", ""),
        history=tuple(document.get("history", ())),
        lease_until=None if lease_until is None else _utc(lease_until),
        version=int(document.get("version", 0)),
    )


def _utc(value: datetime) -> datetime:
    # pymongo hands back naive datetimes unless the client is tz_aware.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
