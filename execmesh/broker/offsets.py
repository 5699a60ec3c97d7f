"""Which offset of a partition may be committed: the lowest one not yet finished.

Events finish out of order (deliveries run concurrently across partition keys), but a commit
must never pass an unfinished event, or a crash would lose it.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Offsets handed out for one partition, in increasing order, and which are finished."""

    def __init__(self, position: int) -> None:
        self._pending: deque[int] = deque()
        self._finished: set[int] = set()
        self._next = position
        self._committed = position

    def started(self, offset: int) -> None:
        self._pending.append(offset)
        self._next = offset + 1

    def finished(self, offset: int) -> None:
        self._finished.add(offset)
        while self._pending and self._pending[0] in self._finished:
            self._finished.discard(self._pending.popleft())

    @property
    def next_offset(self) -> int:
        """The offset after the last one handed out."""
        return self._next

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def committable(self) -> int:
        """The offset a restart should resume from."""
        return self._pending[0] if self._pending else self._next

    def to_commit(self) -> int | None:
        """The new commit point, or None when it has not moved since the last commit."""
        offset = self.committable()
        return None if offset == self._committed else offset

    def committed(self, offset: int) -> None:
        self._committed = offset
