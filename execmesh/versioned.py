"""Documents saved with compare-and-set, correct on MongoDB and on FerretDB 1.x alike.

The usual optimistic lock, ``find_one_and_update({_id, version: v}, {$set: {version: v + 1}})``,
is atomic on MongoDB but not on FerretDB 1.x with SQLite: it queries, then writes by ``_id``
outside one transaction (FerretDB issue #3040), so two writers that read the same version
both "win" and one update is lost (``tests/integration/saga`` shows it). The one check every
backend does atomically is the uniqueness of ``_id`` on insert. So each version is an
immutable document ``<key>#<version>`` in ``<name>.versions``: whoever inserts version v + 1
first owns it, the other gets ``DuplicateKeyError`` and retries.

``<name>`` holds one head per key for queries (deadlines, status, owner): the whole latest
version, or only ``head_fields`` of it, and only for keys whose latest version passes
``head_if`` (queries scan every head on FerretDB, so heads are kept few and small). A head may
lag behind its versions: on purpose, when a save changed none of the head's fields (one write
instead of two), or because a writer died between its two writes. ``get`` always reads
forward to the newest version, and rewrites the head only if it is wrong, so nothing is lost
and reads stay reads.

Each process remembers the latest version it read or saved of its most recent keys, with a
head known to be right: reading such a key again is one probe for the version after it (a
miss: it is still the latest) instead of up to three reads. Versions never change, so only a
newer one can make it stale, and the probe finds that; a key deleted by another process may
still be read from here until it is forgotten (only the saga deletes, long after the end).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from execmesh.errors import TransientError

logger = logging.getLogger(__name__)

Document = dict[str, Any]
T = TypeVar("T")

VERSION = "version"
KEY = "key"
# Keys whose latest version a process remembers: far more than are in flight at once (the
# admission limit), few enough to bound the memory (an execution holds up to 32 KiB inline).
REMEMBERED_KEYS = 256


class VersionConflict(Exception):
    """The document changed since it was read; read it again and retry."""


class VersionedCollection:
    def __init__(
        self,
        database: Database[Document],
        name: str,
        head_fields: Collection[str] | None = None,
        head_if: Callable[[Mapping[str, Any]], bool] | None = None,
        remembered_keys: int = REMEMBERED_KEYS,
    ) -> None:
        self.name = name
        self.heads = database[name]
        self.versions = database[f"{name}.versions"]
        self.head_fields = None if head_fields is None else frozenset(head_fields)
        self.head_if = head_if
        self._latest = _Latest(remembered_keys)

    def ensure_indexes(self) -> None:
        self.versions.create_index([(KEY, ASCENDING)])

    def get(self, key: str) -> Document | None:
        """The latest version of ``key`` (with its ``version``), or None."""
        try:
            latest = self._latest.get(key)
            if latest is not None and self._version(key, latest[VERSION] + 1) is None:
                return _public(key, latest)
            head = self.heads.find_one({"_id": key})
            version = 0 if head is None else int(head[VERSION])
            latest = head if self.head_fields is None else self._version(key, version)
            if latest is None:
                version = 0  # a head whose versions are gone says nothing: read them all
            while (newer := self._version(key, version + 1)) is not None:
                latest, version = newer, version + 1
            if latest is not None:
                self._repair_head(key, head, latest)
        except PyMongoError as error:
            raise TransientError(f"reading {self.name} {key}: {error}") from error
        if latest is None:
            return None
        self._latest.remember(key, latest)
        return _public(key, latest)

    def save(
        self,
        key: str,
        document: Mapping[str, Any],
        read_version: int,
        *,
        refresh_head: bool = True,
    ) -> int:
        """Store ``document`` as the version after ``read_version``; returns the new version.

        ``VersionConflict`` if another writer stored that version first. Pass
        ``refresh_head=False`` when none of the head's fields changed.
        """
        version = read_version + 1
        stored = {**document, "_id": _version_id(key, version), KEY: key, VERSION: version}
        previous = self._latest.forget(key)
        try:
            self.versions.insert_one(stored)
        except DuplicateKeyError:
            raise VersionConflict(f"{self.name} {key} version {version}") from None
        except PyMongoError as error:
            raise TransientError(f"saving {self.name} {key}: {error}") from error
        if not refresh_head:
            # The head is right for this version too only if it would read the same.
            if self._head_unchanged(previous, read_version, stored):
                self._latest.remember(key, stored)
            return version
        try:
            self._set_head(key, stored)
        except PyMongoError as error:
            # The version is saved; the head catches up on the next read of this key.
            raise TransientError(f"saving {self.name} {key} head: {error}") from error
        self._latest.remember(key, stored)
        return version

    def find_heads(
        self, query: Mapping[str, Any], sort: list[tuple[str, int]], limit: int
    ) -> list[Document]:
        """Heads matching ``query``; they may lag, so act only on what ``get`` returns."""
        try:
            return list(self.heads.find(dict(query)).sort(sort).limit(limit))
        except PyMongoError as error:
            raise TransientError(f"querying {self.name}: {error}") from error

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        if not keys:
            return 0
        for key in keys:
            self._latest.forget(key)
        try:
            # Heads first: versions left by a crash in between are found and deleted again,
            # while a head left without its versions would hide the key's next versions.
            deleted = self.heads.delete_many({"_id": {"$in": keys}}).deleted_count
            self.versions.delete_many({KEY: {"$in": keys}})
        except PyMongoError as error:
            raise TransientError(f"deleting from {self.name}: {error}") from error
        return deleted

    def _version(self, key: str, version: int) -> Document | None:
        if version < 1:
            return None
        return self.versions.find_one({"_id": _version_id(key, version)})

    def _head(self, latest: Mapping[str, Any]) -> Document:
        fields = self.head_fields
        return {
            name: value
            for name, value in latest.items()
            if name not in ("_id", KEY, VERSION) and (fields is None or name in fields)
        }

    def _repair_head(self, key: str, head: Document | None, latest: Mapping[str, Any]) -> None:
        if (None if head is None else _content(head)) != self._head_of(latest):
            self._set_head(key, latest)

    def _head_unchanged(
        self, previous: Document | None, read_version: int, stored: Mapping[str, Any]
    ) -> bool:
        """Whether ``previous``, remembered at ``read_version``, has the head ``stored`` has."""
        if previous is None or previous[VERSION] != read_version:
            return False
        return self._head_of(previous) == self._head_of(stored)

    def _head_of(self, latest: Mapping[str, Any]) -> Document | None:
        """What the head of ``latest`` holds, None for no head; versions aside."""
        return self._head(latest) if self._wants_head(latest) else None

    def _wants_head(self, latest: Mapping[str, Any]) -> bool:
        return self.head_if is None or self.head_if(latest)

    def _set_head(self, key: str, latest: Mapping[str, Any]) -> None:
        if self._wants_head(latest):
            self._advance_head(key, latest)
        else:
            self.heads.delete_one({"_id": key, VERSION: {"$lte": latest[VERSION]}})

    def _advance_head(self, key: str, latest: Mapping[str, Any]) -> None:
        head = {**self._head(latest), VERSION: latest[VERSION]}
        # Never moves a head backwards on MongoDB; on FerretDB a racing writer can, which only
        # makes the head lag (see the module docstring). A duplicate key means the head is
        # already at this version or later.
        with contextlib.suppress(DuplicateKeyError):
            self.heads.replace_one({"_id": key, VERSION: {"$lt": head[VERSION]}}, head, upsert=True)


class _Latest:
    """The latest version of the most recently used keys, for ``VersionedCollection.get``."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._documents: OrderedDict[str, Document] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Document | None:
        with self._lock:
            document = self._documents.get(key)
            if document is not None:
                self._documents.move_to_end(key)
            return document

    def remember(self, key: str, document: Document) -> None:
        with self._lock:
            self._documents[key] = document
            self._documents.move_to_end(key)
            while len(self._documents) > self._capacity:
                self._documents.popitem(last=False)

    def forget(self, key: str) -> Document | None:
        with self._lock:
            return self._documents.pop(key, None)


def read_modify_save(attempt: Callable[[bool], T], what: str, *, likely_new: bool = False) -> T:
    """Run ``attempt(read)`` until it saves without a ``VersionConflict``.

    ``attempt`` reads the document when ``read`` is true and works from none otherwise. A
    document that is ``likely_new`` is tried unread first (two reads fewer): its save as
    version 1 conflicts if it existed after all, and the reading attempts take over.
    """
    if likely_new:
        with contextlib.suppress(VersionConflict):
            return attempt(False)
    return retry_on_conflict(lambda: attempt(True), what)


def retry_on_conflict(attempt: Callable[[], T], what: str, attempts: int = 20) -> T:
    """Run a read-modify-save ``attempt`` until it saves without a ``VersionConflict``."""
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except VersionConflict:
            logger.debug("%s changed under us (attempt %d)", what, number)
            # Jitter, so that two contenders do not collide again in lockstep.
            time.sleep(random.uniform(0, 0.002 * number))
    raise TransientError(f"{what}: still conflicting after {attempts} attempts")


def _public(key: str, latest: Mapping[str, Any]) -> Document:
    return {**{n: v for n, v in latest.items() if n != KEY}, "_id": key}


def _content(head: Mapping[str, Any]) -> Document:
    return {name: value for name, value in head.items() if name not in ("_id", VERSION)}


def _version_id(key: str, version: int) -> str:
    return f"{key}#{version}"
