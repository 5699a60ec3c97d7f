"""One contract for every execution store: in-memory and MongoDB (real FerretDB)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from execmesh.events import (
    ExecutionAccepted,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionSpec,
    ExecutionTimedOut,
    FailureType,
    Limits,
    Payload,
    PodRunning,
    Priority,
    ResultStored,
    StreamOutput,
)
from execmesh.mesh.envelope import IncomingEvent
from execmesh.results.record import ExecutionDocument, ExecutionStatus
from execmesh.results.store import (
    ExecutionStore,
    InMemoryExecutionStore,
    MongoExecutionStore,
    record_event,
)
from execmesh.versioned import VersionConflict

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
SPEC = ExecutionSpec(language="python", version="3.11", script="print(1)")
LIMITS = Limits(timeout_seconds=5, memory_mb=64, cpu_millis=250, output_bytes=1024)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.services)])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], ExecutionStore]]:
    if request.param == "memory":
        shared = InMemoryExecutionStore()
        yield lambda: shared
        return
    database: Database[dict[str, Any]] = request.getfixturevalue("mongo_database")

    def mongo() -> ExecutionStore:
        store = MongoExecutionStore(database)
        store.ensure_indexes()
        return store

    yield mongo


@pytest.fixture
def store(make_store: Callable[[], ExecutionStore]) -> ExecutionStore:
    return make_store()


def deliver(store: ExecutionStore, payload: Payload, id: str) -> tuple[Payload, ...]:
    return record_event(store, IncomingEvent.of(payload, id=id, source="/test"), T0)


def test_an_unknown_execution_is_none(store: ExecutionStore) -> None:
    assert store.get("nope") is None


def test_a_recorded_execution_reads_back_whole(store: ExecutionStore) -> None:
    deliver(
        store, ExecutionRequested(execution_id="e1", user_id="u", spec=SPEC, submitted_at=T0), "1"
    )
    accepted = ExecutionAccepted(
        execution_id="e1",
        user_id="u",
        spec=SPEC,
        limits=LIMITS,
        priority=Priority.HIGH,
        lease_expires_at=T0,
    )
    deliver(store, accepted, "2")
    deliver(store, PodRunning(execution_id="e1", pod_name="p", started_at=T0), "3")
    stdout = StreamOutput(data="\u00e9\n", size=3)
    emitted = deliver(store, ExecutionCompleted(execution_id="e1", exit_code=0, stdout=stdout), "4")
    assert emitted[0] == ResultStored(execution_id="e1", status="completed")
    document = store.get("e1")
    assert document is not None and document.version == 4
    assert document.status is ExecutionStatus.COMPLETED
    assert document.result is not None and document.result.stdout == stdout
    assert (document.limits, document.started_at, document.user_id) == (LIMITS, T0, "u")


def test_saving_from_a_stale_version_conflicts(store: ExecutionStore) -> None:
    first = store.save(ExecutionDocument(execution_id="e1", status="requested", updated_at=T0))
    store.save(first.model_copy(update={"status": ExecutionStatus.QUEUED}))
    with pytest.raises(VersionConflict):
        store.save(first.model_copy(update={"status": ExecutionStatus.RUNNING}))
    current = store.get("e1")
    assert current is not None and current.status is ExecutionStatus.QUEUED


def test_concurrent_terminal_events_store_exactly_one_result(
    make_store: Callable[[], ExecutionStore],
) -> None:
    contenders: list[Payload] = [
        ExecutionCompleted(execution_id="race", exit_code=0),
        ExecutionFailed(execution_id="race", error_type=FailureType.SANDBOX, message="x"),
        ExecutionTimedOut(execution_id="race", timeout_seconds=1),
        ExecutionCancelled(execution_id="race", reason="stop"),
        ExecutionCompleted(execution_id="race", exit_code=1),
        ExecutionCompleted(execution_id="race", exit_code=2),
    ]
    barrier = threading.Barrier(len(contenders))
    announced: list[Payload] = []
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            barrier.wait(timeout=10)
            announced.extend(deliver(make_store(), contenders[number], f"t{number}"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    document = make_store().get("race")
    assert document is not None and document.result is not None
    stored = [p for p in announced if isinstance(p, ResultStored)]
    assert stored == [ResultStored(execution_id="race", status=document.result.status)]
    late_ids = {late.event_id for late in document.late_results}
    assert late_ids | {document.result.event_id} == {f"t{n}" for n in range(len(contenders))}
    assert len(document.late_results) == len(contenders) - 1


def test_many_executions_recorded_at_once_are_all_kept(
    make_store: Callable[[], ExecutionStore],
) -> None:
    def worker(number: int) -> None:
        store = make_store()
        for index in range(10):
            execution_id = f"e{number}-{index}"
            deliver(store, ExecutionCompleted(execution_id=execution_id, exit_code=index), "c")
            deliver(store, PodRunning(execution_id=execution_id, pod_name="p"), "r")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    store = make_store()
    for number, index in [(n, i) for n in range(4) for i in range(10)]:
        document = store.get(f"e{number}-{index}")
        assert document is not None and document.result is not None
        assert document.result.exit_code == index
        assert document.status is ExecutionStatus.COMPLETED


def test_the_document_is_dated_at_the_time_of_recording(store: ExecutionStore) -> None:
    event = IncomingEvent.of(PodRunning(execution_id="e1", pod_name="p"), id="x", source="/s")
    record_event(store, event, T0 + timedelta(minutes=3))
    document = store.get("e1")
    assert document is not None and document.updated_at == T0 + timedelta(minutes=3)
