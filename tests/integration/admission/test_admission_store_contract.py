"""One contract for every admission store: in memory and on the real Redis (Lua scripts)."""

from __future__ import annotations

import queue
import random
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from execmesh.admission import (
    Admission,
    AdmissionStore,
    Capacity,
    InMemoryAdmissionStore,
    RedisAdmissionStore,
    Ticket,
)
from execmesh.events import Priority
from execmesh.settings import Settings
from tests.support.redis_keys import redis_client

NOW = 1_800_000_000_000
LEASE_MS = 60_000
DEFAULT_CAPACITY = Capacity()

MakeStore = Callable[..., AdmissionStore]


def memory_factory(prefix: str) -> Iterator[MakeStore]:
    yield lambda capacity=DEFAULT_CAPACITY: InMemoryAdmissionStore(capacity)


def redis_factory(prefix: str) -> Iterator[MakeStore]:
    with redis_client(prefix) as client:
        yield lambda capacity=DEFAULT_CAPACITY: RedisAdmissionStore(client, capacity, prefix=prefix)


@pytest.fixture(
    params=[
        pytest.param(memory_factory, id="memory"),
        pytest.param(redis_factory, id="redis", marks=pytest.mark.services),
    ]
)
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    yield from request.param(f"execmesh:test:admission:{uuid.uuid4().hex}")


def ticket(
    execution_id: str,
    user: str = "alice",
    priority: Priority = Priority.NORMAL,
    cpu: int = 500,
    memory: int = 256,
    lease_ms: int = LEASE_MS,
) -> Ticket:
    return Ticket(execution_id, user, priority, cpu, memory, lease_ms, f'{{"id":"{execution_id}"}}')


def ids(admitted: tuple[Admission, ...]) -> list[str]:
    return [a.execution_id for a in admitted]


def fill(store: AdmissionStore, *names: str, user: str = "filler") -> None:
    for name in names:
        store.submit(ticket(name, user=user), f"fill-{name}", NOW)


def test_an_execution_is_admitted_with_a_lease_when_there_is_room(make_store: MakeStore) -> None:
    store = make_store()

    outcome = store.submit(ticket("ex-1"), "req-1", NOW)

    assert outcome.state == "running"
    assert outcome.admitted == (Admission("ex-1", NOW + LEASE_MS, '{"id":"ex-1"}'),)
    assert store.usage().running == 1


def test_a_user_at_their_limit_waits_in_the_queue(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_per_user=2, max_global=10))
    fill(store, "ex-1", "ex-2", user="alice")

    outcome = store.submit(ticket("ex-3", user="alice"), "req-3", NOW)

    assert (outcome.state, outcome.position, outcome.admitted) == ("queued", 0, ())
    assert store.usage().per_user == {"alice": 2}


def test_a_user_at_their_limit_does_not_hold_back_other_users(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_per_user=1, max_global=10))
    fill(store, "ex-a1", "ex-a2", user="alice")

    outcome = store.submit(ticket("ex-b1", user="bob"), "req-b1", NOW)

    assert ids(outcome.admitted) == ["ex-b1"]
    assert store.position("ex-a2") == 0


def test_the_global_limit_queues_everyone(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_per_user=5, max_global=2))
    store.submit(ticket("ex-1", user="a"), "r1", NOW)
    store.submit(ticket("ex-2", user="b"), "r2", NOW)

    outcome = store.submit(ticket("ex-3", user="c"), "r3", NOW)

    assert outcome.state == "queued"
    assert store.usage().running == 2


def test_the_cpu_budget_holds_an_execution_that_does_not_fit(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=10, cpu_millis=1000, memory_mb=10_000))
    store.submit(ticket("ex-1", user="a", cpu=600), "r1", NOW)

    outcome = store.submit(ticket("ex-2", user="b", cpu=600), "r2", NOW)

    assert outcome.state == "queued"
    assert store.usage().cpu_millis == 600


def test_the_memory_budget_holds_an_execution_that_does_not_fit(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=10, cpu_millis=10_000, memory_mb=512))
    store.submit(ticket("ex-1", user="a", memory=300), "r1", NOW)

    outcome = store.submit(ticket("ex-2", user="b", memory=300), "r2", NOW)

    assert outcome.state == "queued"
    assert store.usage().memory_mb == 300


def test_a_large_execution_at_the_head_is_not_overtaken_by_smaller_ones(
    make_store: MakeStore,
) -> None:
    store = make_store(Capacity(max_global=10, cpu_millis=1000, memory_mb=10_000))
    store.submit(ticket("ex-running", user="a", cpu=600), "r0", NOW)
    store.submit(ticket("ex-large", user="b", cpu=800), "r1", NOW)

    outcome = store.submit(ticket("ex-small", user="c", cpu=100), "r2", NOW)

    assert (outcome.state, outcome.position) == ("queued", 1)


def test_queue_positions_follow_priority_then_arrival(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=1))
    fill(store, "ex-running")

    low = store.submit(ticket("ex-low", priority=Priority.LOW), "r1", NOW)
    normal = store.submit(ticket("ex-normal", priority=Priority.NORMAL), "r2", NOW)
    high = store.submit(ticket("ex-high", priority=Priority.HIGH), "r3", NOW)

    assert (low.position, normal.position, high.position) == (0, 0, 0)
    assert [store.position(i) for i in ("ex-high", "ex-normal", "ex-low")] == [0, 1, 2]
    assert store.position("ex-running") is None


def test_under_a_backlog_high_starts_before_normal_before_low(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=1))
    fill(store, "ex-running")
    order = [
        ("ex-low-1", Priority.LOW),
        ("ex-normal-1", Priority.NORMAL),
        ("ex-high-1", Priority.HIGH),
        ("ex-low-2", Priority.LOW),
        ("ex-high-2", Priority.HIGH),
        ("ex-normal-2", Priority.NORMAL),
    ]
    for name, priority in order:
        store.submit(ticket(name, user=name, priority=priority), f"req-{name}", NOW)

    started: list[str] = []
    current = "ex-running"
    for step in range(len(order)):
        admitted = ids(store.release(current, f"done-{step}", NOW).admitted)
        assert len(admitted) == 1
        current = admitted[0]
        started.append(current)

    assert started == [
        "ex-high-1",
        "ex-high-2",
        "ex-normal-1",
        "ex-normal-2",
        "ex-low-1",
        "ex-low-2",
    ]


def test_a_terminal_event_frees_the_slot_and_admits_the_next(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=1))
    fill(store, "ex-1")
    store.submit(ticket("ex-2"), "r2", NOW)

    outcome = store.release("ex-1", "done-1", NOW + 5)

    assert outcome.released
    assert outcome.admitted == (Admission("ex-2", NOW + 5 + LEASE_MS, '{"id":"ex-2"}'),)


def test_releasing_twice_frees_one_slot(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=2))
    fill(store, "ex-1", "ex-2", "ex-3", "ex-4", user="u")

    first = store.release("ex-1", "completed-ex-1", NOW)
    second = store.release("ex-1", "timed-out-ex-1", NOW)

    assert (first.released, ids(first.admitted)) == (True, ["ex-3"])
    assert (second.released, second.admitted) == (False, ())
    assert store.usage().running == 2
    assert store.position("ex-4") == 0


def test_a_retried_terminal_event_re_announces_exactly_the_same_admissions(
    make_store: MakeStore,
) -> None:
    store = make_store(Capacity(max_global=2))
    fill(store, "ex-1", "ex-2", "ex-3", "ex-4", user="u")
    first = store.release("ex-1", "completed-ex-1", NOW)

    retried = store.release("ex-1", "completed-ex-1", NOW + 1000)

    assert retried == first
    assert ids(retried.admitted) == ["ex-3"]
    assert store.position("ex-4") == 0
    assert store.usage().running == 2


def test_a_retried_request_gets_the_same_answer(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=1))
    fill(store, "ex-1")
    first = store.submit(ticket("ex-2"), "req-2", NOW)
    store.submit(ticket("ex-3", priority=Priority.HIGH), "req-3", NOW)

    retried = store.submit(ticket("ex-2"), "req-2", NOW + 1000)

    assert retried == first
    assert store.position("ex-2") == 1


def test_a_second_request_for_a_running_execution_re_announces_its_lease(
    make_store: MakeStore,
) -> None:
    store = make_store()
    first = store.submit(ticket("ex-1"), "req-1", NOW)

    again = store.submit(ticket("ex-1"), "req-1-resent", NOW + 5000)

    assert again.state == "running"
    assert again.admitted == first.admitted
    assert store.usage().running == 1


def test_a_request_for_a_finished_execution_admits_nothing(make_store: MakeStore) -> None:
    store = make_store()
    store.submit(ticket("ex-1"), "req-1", NOW)
    store.release("ex-1", "done-1", NOW)

    again = store.submit(ticket("ex-1"), "req-1-resent", NOW)

    assert (again.state, again.admitted) == ("done", ())
    assert store.usage().running == 0


def test_an_execution_ended_before_its_request_is_never_admitted(make_store: MakeStore) -> None:
    store = make_store()
    store.release("ex-1", "rejected-1", NOW)

    outcome = store.submit(ticket("ex-1"), "req-1", NOW)

    assert (outcome.state, outcome.admitted) == ("done", ())


def test_an_expired_lease_frees_the_slot_and_admits_the_next(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=1))
    store.submit(ticket("ex-lost", lease_ms=1000), "r1", NOW)
    store.submit(ticket("ex-next"), "r2", NOW)

    early = store.expire("ping-1", NOW + 999)
    due = store.expire("ping-2", NOW + 1000)

    assert (early.expired, early.admitted) == ((), ())
    assert due.expired == ("ex-lost",)
    assert ids(due.admitted) == ["ex-next"]
    assert store.release("ex-lost", "late-completed", NOW + 2000).released is False
    assert store.usage().running == 1


def test_cancelling_a_queued_execution_removes_it_from_the_queue(make_store: MakeStore) -> None:
    store = make_store(Capacity(max_global=1))
    fill(store, "ex-1", "ex-2", "ex-3")

    outcome = store.cancel("ex-2", "cancel-2", NOW)

    assert (outcome.cancelled, outcome.state) == (True, "done")
    assert store.position("ex-2") is None
    assert store.position("ex-3") == 0
    assert ids(store.release("ex-1", "done-1", NOW).admitted) == ["ex-3"]


def test_cancelling_a_running_execution_leaves_its_slot_to_the_saga(
    make_store: MakeStore,
) -> None:
    store = make_store()
    fill(store, "ex-1")

    outcome = store.cancel("ex-1", "cancel-1", NOW)

    assert (outcome.cancelled, outcome.state) == (False, "running")
    assert store.usage().running == 1


def test_cancelling_an_unknown_execution_does_nothing(make_store: MakeStore) -> None:
    store = make_store()

    outcome = store.cancel("ex-nobody", "cancel-x", NOW)

    assert (outcome.cancelled, outcome.state) == (False, "unknown")


def test_limits_are_never_exceeded_under_concurrent_admissions(make_store: MakeStore) -> None:
    max_per_user, max_global, users, per_user = 5, 10, 3, 34
    store = make_store(Capacity(max_per_user=max_per_user, max_global=max_global))
    work: queue.Queue[str] = queue.Queue()
    announced: list[str] = []
    released: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    samples: list[tuple[int, dict[str, int]]] = []
    finished = threading.Event()

    def announce(admitted: tuple[Admission, ...]) -> None:
        with lock:
            announced.extend(ids(admitted))
        for admission in admitted:
            work.put(admission.execution_id)

    def submitter(user: int) -> None:
        for n in range(per_user):
            execution_id = f"ex-{user}-{n}"
            announce(
                store.submit(ticket(execution_id, user=f"user-{user}"), execution_id, NOW).admitted
            )

    def runner() -> None:
        rng = random.Random()
        while not finished.is_set():
            try:
                execution_id = work.get(timeout=0.05)
            except queue.Empty:
                continue
            # Most runs are held for a few milliseconds, so that the limits are reached even
            # on a slow machine; the rest are released at once, racing the submitters.
            if rng.random() < 0.75:
                threading.Event().wait(0.001 + rng.random() / 200)
            outcome = store.release(execution_id, f"done-{execution_id}", NOW)
            with lock:
                released.append(execution_id)
            announce(outcome.admitted)

    def sampler() -> None:
        while not finished.is_set():
            usage = store.usage()
            samples.append((usage.running, dict(usage.per_user)))

    def guarded(target: Callable[..., None], *args: int) -> Callable[[], None]:
        def run() -> None:
            try:
                target(*args)
            except BaseException as error:
                errors.append(error)
                finished.set()

        return run

    threads = [threading.Thread(target=guarded(submitter, u)) for u in range(users)]
    threads += [threading.Thread(target=guarded(runner)) for _ in range(4)]
    threads.append(threading.Thread(target=guarded(sampler)))
    for thread in threads:
        thread.start()
    try:
        for _ in range(3000):
            with lock:
                if len(released) == users * per_user or finished.is_set():
                    break
            threading.Event().wait(0.01)
    finally:
        finished.set()
        for thread in threads:
            thread.join(timeout=10)

    assert not errors, errors
    assert sorted(announced) == sorted(f"ex-{u}-{n}" for u in range(users) for n in range(per_user))
    assert len(samples) > 10
    assert max(running for running, _ in samples) <= max_global
    assert max(max(by_user.values(), default=0) for _, by_user in samples) <= max_per_user
    assert max(running for running, _ in samples) == max_global, "the test never saturated"
    final = store.usage()
    assert (final.running, final.queued, final.per_user, final.cpu_millis) == (0, 0, {}, 0)


def test_a_passed_over_execution_keeps_its_place_until_its_user_has_room(
    make_store: MakeStore,
) -> None:
    store = make_store(Capacity(max_per_user=1, max_global=2))
    store.submit(ticket("ex-a1", user="alice"), "r1", NOW)
    store.submit(ticket("ex-b1", user="bob"), "r2", NOW)
    store.submit(ticket("ex-a2", user="alice"), "r3", NOW)
    store.submit(ticket("ex-c1", user="carol"), "r4", NOW)

    bob_done = store.release("ex-b1", "done-b1", NOW)
    alice_done = store.release("ex-a1", "done-a1", NOW)

    assert ids(bob_done.admitted) == ["ex-c1"]
    assert ids(alice_done.admitted) == ["ex-a2"]


@pytest.mark.services
def test_a_queue_entry_whose_record_was_lost_does_not_stall_the_queue() -> None:
    prefix = f"execmesh:test:admission:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(Settings.from_env().redis_url, socket_timeout=5.0)
    store = RedisAdmissionStore(client, Capacity(max_global=1), prefix=prefix)
    try:
        fill(store, "ex-1", "ex-2", "ex-3")
        client.delete(f"{prefix}:exec:ex-2")

        outcome = store.release("ex-1", "done-1", NOW)

        assert ids(outcome.admitted) == ["ex-3"]
    finally:
        client.delete(*client.scan_iter(f"{prefix}:*"))
        client.close()
