"""The node's object store: every API object, persisted in SQLite, with a watch history.

One global resourceVersion counter increases on every write, as etcd's revision does.
Objects live in memory for reads and are written through to SQLite (WAL, no fsync per
commit) so that pod records survive a restart of the node. Each object is kept as its JSON
text: every read parses a fresh copy, several times faster than ``copy.deepcopy`` of a
kept dict. The history of watch events is bounded: a watch from a resourceVersion older
than what is kept is answered with 410.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execmesh.errors import PermanentError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)


class NotFound(PermanentError):
    pass


class AlreadyExists(PermanentError):
    pass


class Expired(PermanentError):
    """The requested resourceVersion is older than the kept watch history."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    kind: str
    object: Obj

    @property
    def resource_version(self) -> int:
        return int(self.object["metadata"]["resourceVersion"])


class Subscription:
    """A live feed of events for one watch; overflowing it closes the watch."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue(limit)

    def offer(self, event: WatchEvent | None) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (uid TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: Path, history: int = 2000, queue_limit: int = 10000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._bodies: dict[Key, str] = {}
        for kind, namespace, name, body in self._db.execute(
            "SELECT kind, namespace, name, body FROM objects"
        ):
            self._bodies[(kind, namespace, name)] = body
        row = self._db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()
        self._rv = int(row[0]) if row else 0
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._oldest_rv = self._rv  # every event after this one is in the history
        self._subscribers: set[Subscription] = set()
        self._queue_limit = queue_limit

    def close(self) -> None:
        for subscription in list(self._subscribers):
            subscription.offer(None)
        self._db.close()

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        try:
            return _parse(self._bodies[(kind, namespace, name)])
        except KeyError:
            raise NotFound(f'{kind} "{name}" not found') from None

    def find(self, kind: str, namespace: str, name: str) -> Obj | None:
        body = self._bodies.get((kind, namespace, name))
        return None if body is None else _parse(body)

    def list_objects(
        self,
        kind: str,
        namespace: str | None = None,
        matches: Callable[[Obj], bool] = lambda _: True,
    ) -> list[Obj]:
        candidates = (
            _parse(body)
            for (k, ns, _), body in self._bodies.items()
            if k == kind and (namespace is None or ns == namespace)
        )
        found = [obj for obj in candidates if matches(obj)]
        found.sort(key=lambda obj: int(obj["metadata"]["resourceVersion"]))
        return found

    def create(self, kind: str, obj: Obj) -> Obj:
        key = _key(kind, obj)
        if key in self._bodies:
            raise AlreadyExists(f'{kind} "{key[2]}" already exists')
        return self._write(kind, key, obj, "ADDED")

    def replace(self, kind: str, obj: Obj) -> Obj:
        key = _key(kind, obj)
        if key not in self._bodies:
            raise NotFound(f'{kind} "{key[2]}" not found')
        return self._write(kind, key, obj, "MODIFIED")

    def update(self, kind: str, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        obj = self.get(kind, namespace, name)
        change(obj)
        return self._write(kind, (kind, namespace, name), obj, "MODIFIED")

    def delete(self, kind: str, namespace: str, name: str) -> Obj:
        key = (kind, namespace, name)
        if key not in self._bodies:
            raise NotFound(f'{kind} "{name}" not found')
        obj = _parse(self._bodies.pop(key))
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        with self._db:
            self._db.execute(
                "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", key
            )
            self._save_rv()
        self._publish(WatchEvent("DELETED", kind, obj))
        return _parse(_dump(obj))

    def _write(self, kind: str, key: Key, obj: Obj, event_type: str) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        body = _dump(obj)
        self._bodies[key] = body
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", (*key, body))
            self._save_rv()
        self._publish(WatchEvent(event_type, kind, _parse(body)))
        return obj

    def _save_rv(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(self._rv),))

    def _publish(self, event: WatchEvent) -> None:
        if len(self._history) == self._history.maxlen:
            self._oldest_rv = self._history[0].resource_version
        self._history.append(event)
        for subscription in list(self._subscribers):
            if not subscription.offer(event):
                log.warning("closing a watch that fell %d events behind", self._queue_limit)
                self._subscribers.discard(subscription)
                subscription.queue.get_nowait()  # make room for the end marker
                subscription.offer(None)

    def subscribe(self, kind: str, since: int) -> tuple[Subscription, list[WatchEvent]]:
        """Events of ``kind`` after resourceVersion ``since``: the backlog, then live ones."""
        if since < self._oldest_rv:
            raise Expired(f"too old resource version: {since} ({self._oldest_rv})")
        backlog = [e for e in self._history if e.kind == kind and e.resource_version > since]
        subscription = Subscription(self._queue_limit)
        self._subscribers.add(subscription)
        return subscription, backlog

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    # Runtime records: what a running pod holds on the host (cgroups), kept so that a
    # restarted node can clean up after a crash.
    def save_run(self, uid: str, body: Mapping[str, Any]) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)", (uid, json.dumps(body)))

    def drop_run(self, uid: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM runs WHERE uid = ?", (uid,))

    def runs(self) -> list[tuple[str, Obj]]:
        rows = self._db.execute("SELECT uid, body FROM runs").fetchall()
        return [(uid, json.loads(body)) for uid, body in rows]


def _dump(obj: Obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _parse(body: str) -> Obj:
    obj: Obj = json.loads(body)
    return obj


def _key(kind: str, obj: Obj) -> Key:
    metadata = obj["metadata"]
    return (kind, metadata.get("namespace", ""), metadata["name"])
