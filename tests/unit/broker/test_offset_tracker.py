from __future__ import annotations

from execmesh.broker.offsets import OffsetTracker


def test_the_commit_point_never_passes_an_unfinished_offset() -> None:
    tracker = OffsetTracker(10)
    for offset in (10, 11, 12, 13):
        tracker.started(offset)
    tracker.finished(11)
    tracker.finished(13)
    assert tracker.committable() == 10
    tracker.finished(10)
    assert tracker.committable() == 12
    tracker.finished(12)
    assert tracker.committable() == 14
    assert tracker.in_flight == 0


def test_nothing_is_committed_twice() -> None:
    tracker = OffsetTracker(5)
    assert tracker.to_commit() is None
    tracker.started(5)
    tracker.finished(5)
    assert tracker.to_commit() == 6
    tracker.committed(6)
    assert tracker.to_commit() is None


def test_gaps_in_offsets_from_compaction_or_transactions_do_not_block_commits() -> None:
    tracker = OffsetTracker(0)
    tracker.started(0)
    tracker.started(7)
    tracker.finished(7)
    tracker.finished(0)
    assert tracker.committable() == 8
