"""One contract for every saga store: the in-memory one and MongoDB (real FerretDB)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionSpec,
    ExecutionTimedOut,
    FailureType,
    Limits,
    PodCreateRequested,
    PodRunning,
    Priority,
    TerminalStatus,
)
from execmesh.saga.engine import SagaConfig, apply_event, check_deadlines
from execmesh.saga.machine import Applied, Phase, Policy, Saga
from execmesh.saga.store import InMemorySagaStore, MongoSagaStore, SagaStore
from execmesh.versioned import VersionConflict

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
POLICY = Policy(
    grace=timedelta(seconds=30), retention=timedelta(hours=1), startup=timedelta(minutes=5)
)
LIMITS = Limits(timeout_seconds=10, memory_mb=128, cpu_millis=500, output_bytes=65536)
SPEC = ExecutionSpec(language="python", version="3.11", script="print('héllo')")


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.services)])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], SagaStore]]:
    """Builds stores that share one backend, as separate function instances would."""
    if request.param == "memory":
        shared = InMemorySagaStore()
        yield lambda: shared
        return
    database: Database[dict[str, Any]] = request.getfixturevalue("mongo_database")

    def mongo() -> SagaStore:
        store = MongoSagaStore(database)
        store.ensure_indexes()
        return store

    yield mongo


@pytest.fixture
def store(make_store: Callable[[], SagaStore]) -> SagaStore:
    return make_store()


def accepted(execution_id: str) -> ExecutionAccepted:
    return ExecutionAccepted(
        execution_id=execution_id,
        user_id="alice",
        spec=SPEC,
        limits=LIMITS,
        priority=Priority.HIGH,
        lease_expires_at=T0 + timedelta(minutes=5),
    )


def start(store: SagaStore, execution_id: str, at: datetime = T0) -> None:
    apply_event(store, execution_id, f"accepted-{execution_id}", accepted(execution_id), at, POLICY)


def start_running(store: SagaStore, execution_id: str, at: datetime = T0) -> None:
    start(store, execution_id, at)
    running = PodRunning(execution_id=execution_id, pod_name=f"exec-{execution_id}")
    apply_event(store, execution_id, f"running-{execution_id}", running, at, POLICY)


def test_an_unknown_saga_is_none(store: SagaStore) -> None:
    assert store.get("nope") is None


def test_a_saved_saga_reads_back_equal_with_the_next_version(store: SagaStore) -> None:
    saga = Saga(
        execution_id="e1",
        phase=Phase.RUNNING,
        updated_at=T0,
        user_id="alice",
        timeout_seconds=2.5,
        accepted_at=T0,
        started_at=T0 + timedelta(seconds=1),
        deadline=T0 + timedelta(seconds=33.5),
        pod_name="exec-e1",
        namespace="execmesh",
        applied=(
            Applied("k1", (PodCreateRequested(execution_id="e1", spec=SPEC, limits=LIMITS),)),
        ),
    )
    saved = store.save(saga)
    assert saved.version == 1
    assert store.get("e1") == saved


def test_optional_fields_cleared_by_an_update_are_gone(store: SagaStore) -> None:
    saved = store.save(Saga("e1", Phase.RUNNING, T0, deadline=T0, cancel_reason="x"))
    finished = replace(
        saved,
        phase=Phase.FINISHED,
        deadline=None,
        cancel_reason=None,
        outcome=TerminalStatus.FAILED,
    )
    store.save(finished)
    assert store.get("e1") == replace(finished, version=2)
    assert store.due(T0 + timedelta(days=1), 10) == []


def test_creating_a_saga_that_exists_conflicts(store: SagaStore) -> None:
    store.save(Saga("e1", Phase.AWAITING_ACCEPTANCE, T0))
    with pytest.raises(VersionConflict):
        store.save(Saga("e1", Phase.POD_REQUESTED, T0))


def test_saving_from_a_stale_version_conflicts(store: SagaStore) -> None:
    first = store.save(Saga("e1", Phase.POD_REQUESTED, T0))
    store.save(replace(first, phase=Phase.RUNNING))
    with pytest.raises(VersionConflict):
        store.save(replace(first, phase=Phase.POD_CREATED))
    current = store.get("e1")
    assert current is not None and current.phase is Phase.RUNNING and current.version == 2


def test_due_finds_active_sagas_past_their_deadline_earliest_first(store: SagaStore) -> None:
    for index in range(5):
        start_running(store, f"e{index}", T0 + timedelta(seconds=index))
    start_running(store, "late", T0 + timedelta(hours=1))
    now = T0 + timedelta(seconds=40 + 3)  # timeout 10 + grace 30
    assert store.due(now, 10) == ["e0", "e1", "e2", "e3"]
    assert store.due(now, 2) == ["e0", "e1"]


def test_a_tick_record_reads_back_and_an_unknown_tick_has_none(store: SagaStore) -> None:
    assert store.tick_targets("tick-1") is None
    store.record_tick("tick-1", ["e2", "e1"], T0)
    assert store.tick_targets("tick-1") == ["e2", "e1"]


def test_a_finished_saga_is_no_longer_due_and_reads_back_finished(store: SagaStore) -> None:
    start(store, "e1")
    finish = ExecutionCompleted(execution_id="e1", exit_code=0)
    apply_event(store, "e1", "done-e1", finish, T0, POLICY)
    assert store.due(T0 + timedelta(days=1), 10) == []
    saga = store.get("e1")
    assert saga is not None and saga.phase is Phase.FINISHED and saga.ended_by == "done-e1"


def test_purge_deletes_only_expired_sagas_in_bounded_batches(store: SagaStore) -> None:
    for index in range(3):
        store.save(Saga(f"old{index}", Phase.FINISHED, T0, purge_after=T0))
    store.save(Saga("young", Phase.FINISHED, T0, purge_after=T0 + timedelta(hours=2)))
    store.save(Saga("active", Phase.RUNNING, T0, deadline=T0))
    store.record_tick("old-tick", ["old0"], T0)
    store.record_tick("young-tick", ["young"], T0 + timedelta(hours=2))
    assert store.purge(T0, 2) == 2
    assert store.purge(T0, 2) == 1
    assert store.purge(T0, 2) == 0
    assert [store.get(f"old{index}") for index in range(3)] == [None, None, None]
    assert store.get("young") is not None and store.get("active") is not None
    assert store.tick_targets("old-tick") is None
    assert store.tick_targets("young-tick") == ["young"]


def test_a_purged_saga_starts_afresh(store: SagaStore) -> None:
    start(store, "e1")
    apply_event(store, "e1", "done", ExecutionCompleted(execution_id="e1", exit_code=0), T0, POLICY)
    assert store.purge(T0 + timedelta(days=1), 10) == 1
    assert store.get("e1") is None
    start(store, "e1", T0 + timedelta(days=2))
    saga = store.get("e1")
    assert saga is not None and saga.phase is Phase.POD_REQUESTED and saga.version == 1


def test_the_deadline_check_times_out_due_sagas_and_is_safe_to_redeliver(store: SagaStore) -> None:
    start_running(store, "e1")
    start_running(store, "e2", T0 + timedelta(minutes=10))
    config = SagaConfig(policy=POLICY, batch_size=10, purge_one_tick_in=1)
    now = T0 + timedelta(seconds=41)
    first = check_deadlines(store, "tick-1", now, config)
    assert [(type(p).__name__, p.execution_id) for p in first] == [  # type: ignore[attr-defined]
        ("ExecutionTimedOut", "e1"),
        ("PodDeleteRequested", "e1"),
        ("SagaCompensated", "e1"),
    ]
    assert check_deadlines(store, "tick-1", now, config) == first
    assert check_deadlines(store, "tick-2", now + timedelta(seconds=1), config) == ()
    ended = store.get("e1")
    assert ended is not None and ended.outcome is TerminalStatus.TIMED_OUT


def test_pod_running_moves_the_deadline_the_check_finds(store: SagaStore) -> None:
    start(store, "slow")  # start-up budget: due at T0 + 5 min
    start_running(store, "quick")  # due at T0 + 40 s
    assert store.due(T0 + timedelta(seconds=40), 10) == ["quick"]
    assert store.due(T0 + timedelta(minutes=5), 10) == ["quick", "slow"]


def test_the_deadline_check_fails_a_pod_that_never_ran_within_the_start_up_budget(
    store: SagaStore,
) -> None:
    start(store, "stuck")
    config = SagaConfig(policy=POLICY, batch_size=10)
    assert check_deadlines(store, "tick-1", T0 + timedelta(seconds=41), config) == ()
    failed, *_ = check_deadlines(store, "tick-2", T0 + timedelta(minutes=5), config)
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.STARTUP_TIMEOUT
    ended = store.get("stuck")
    assert ended is not None and ended.outcome is TerminalStatus.FAILED


def test_concurrent_read_modify_writes_lose_no_update(
    make_store: Callable[[], SagaStore],
) -> None:
    make_store().save(Saga("hot", Phase.RUNNING, T0))
    threads, increments = 4, 15
    conflicts = []

    def worker(number: int) -> None:
        store = make_store()
        for index in range(increments):
            for _ in range(1000):
                saga = store.get("hot")
                assert saga is not None
                mark = Applied(f"w{number}-{index}", ())
                time.sleep(0.0005)  # let the others read the same version
                try:
                    store.save(replace(saga, applied=(*saga.applied, mark)))
                    break
                except VersionConflict:
                    conflicts.append(number)

    run_threads(worker, threads)
    final = make_store().get("hot")
    assert final is not None
    assert len(final.applied) == threads * increments
    assert final.version == 1 + threads * increments
    assert len({a.key for a in final.applied}) == threads * increments
    assert conflicts, "the workers never raced: the test proves nothing"


def test_concurrent_terminal_events_end_the_saga_exactly_once(
    make_store: Callable[[], SagaStore],
) -> None:
    events = [
        ExecutionCompleted(execution_id="race", exit_code=0),
        ExecutionFailed(execution_id="race", error_type=FailureType.EVICTED, message="evicted"),
        ExecutionCompleted(execution_id="race", exit_code=1),
    ]
    start(make_store(), "race")
    barrier = threading.Barrier(len(events))
    emitted: list[str] = []

    def worker(number: int) -> None:
        store = make_store()
        barrier.wait(timeout=10)
        for payload in apply_event(store, "race", f"terminal-{number}", events[number], T0, POLICY):
            emitted.append(payload.TYPE)

    run_threads(worker, len(events))
    final = make_store().get("race")
    assert final is not None and final.phase is Phase.FINISHED
    terminal = ("io.execmesh.saga.completed", "io.execmesh.saga.compensated")
    assert sum(emitted.count(t) for t in terminal) == 1


def run_threads(worker: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(number: int) -> None:
        try:
            worker(number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "worker thread hung"
    assert not errors, errors


@pytest.mark.services
def test_a_document_saved_before_the_start_up_budget_is_read_and_run_to_its_end(
    mongo_database: Database[dict[str, Any]],
) -> None:
    store = MongoSagaStore(mongo_database)
    store.ensure_indexes()
    # What the previous version saved: acceptance + timeout + grace, no start-up budget.
    legacy = {
        "phase": "pod_created",
        "updated_at": T0,
        "applied": [],
        "user_id": "alice",
        "timeout_seconds": 10.0,
        "accepted_at": T0,
        "deadline": T0 + timedelta(seconds=40),
        "pod_name": "exec-legacy",
        "namespace": "execmesh",
    }
    store.documents.save("legacy", legacy, 0)
    config = SagaConfig(policy=POLICY, batch_size=10)
    assert check_deadlines(store, "tick-1", T0 + timedelta(seconds=41), config) == ()
    waiting = store.get("legacy")
    assert waiting is not None and waiting.phase is Phase.POD_CREATED
    assert waiting.deadline == T0 + POLICY.startup and waiting.started_at is None
    # The re-armed deadline was a one-write save: the next tick reads the head right again.
    assert check_deadlines(store, "tick-1b", T0 + timedelta(seconds=45), config) == ()
    assert store.due(T0 + timedelta(seconds=45), 10) == []
    running = PodRunning(
        execution_id="legacy", pod_name="exec-legacy", started_at=T0 + timedelta(seconds=50)
    )
    apply_event(store, "legacy", "running", running, T0 + timedelta(seconds=51), POLICY)
    assert check_deadlines(store, "tick-2", T0 + timedelta(seconds=89), config) == ()
    timed_out, *_ = check_deadlines(store, "tick-3", T0 + timedelta(seconds=90), config)
    assert timed_out == ExecutionTimedOut(execution_id="legacy", timeout_seconds=10)
