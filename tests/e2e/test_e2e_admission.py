"""Admission under load, through the whole pipeline: limits hold, everything finishes, and a
backlog is served by priority.

Sized for a busy 2-core box: 100 one-second runs from 3 users against a per-user limit of 5
and a global limit of 10 take about half a minute; the priority test about twenty seconds.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from execmesh.admission.redis_store import RedisAdmissionStore
from execmesh.admission.store import Capacity
from execmesh.pods.manifest import EXECUTION_ID_LABEL
from tests.e2e.mesh import Mesh, start_mesh
from tests.e2e.test_e2e_executions import PYTHON

pytestmark = [pytest.mark.services, pytest.mark.node, pytest.mark.e2e]

PER_USER = 5
GLOBAL = 10
PORT_OFFSET = 11000
REDIS_DB = 10
SAMPLE_SECONDS = 0.05


@pytest.fixture(scope="module")
def limited_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from start_mesh(
        tmp_path_factory.mktemp("admission-mesh"),
        port_offset=PORT_OFFSET,
        redis_db=REDIS_DB,
        EXECMESH_MAX_PER_USER=str(PER_USER),
        EXECMESH_MAX_GLOBAL=str(GLOBAL),
    )


def admission_store(mesh: Mesh) -> RedisAdmissionStore:
    return RedisAdmissionStore.from_url(
        mesh.settings.redis_url, Capacity.from_settings(mesh.settings)
    )


@dataclass
class Sample:
    running: int
    queued: int
    per_user: dict[str, int]
    active_pods: tuple[str, ...]  # execution ids of the pods not yet terminated

    def pods_per_user(self, owners: dict[str, str]) -> Counter[str]:
        return Counter(owners[execution_id] for execution_id in self.active_pods)


@dataclass
class Sampler:
    """Reads the admission store and the node's pods every ``SAMPLE_SECONDS`` in a thread."""

    mesh: Mesh
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        store = admission_store(self.mesh)
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                usage = store.usage()
                active = [p for p in self.mesh.pods() if _is_active(p)]
            except Exception as error:  # a slow read is a gap in the samples, not a failure
                self.errors.append(repr(error))
                continue
            pods = tuple(_execution_of(p) for p in active)
            self.samples.append(Sample(usage.running, usage.queued, dict(usage.per_user), pods))


def _is_active(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Pending", "Running")


def _execution_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"].get("labels", {}).get(EXECUTION_ID_LABEL, ""))


def submit_all(mesh: Mesh, requests: list[tuple[str, str, str]]) -> list[str]:
    """(script, user, priority) each; a few at a time, as several API replicas would."""
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(mesh.submit, "python", PYTHON, script, user=user, priority=priority)
            for script, user, priority in requests
        ]
        return [future.result() for future in futures]


def wait_all(mesh: Mesh, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    documents: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        pending = [i for i in ids if i not in documents]
        for document in mesh.database["executions"].find({"_id": {"$in": pending}}):
            if document.get("result") is not None:
                documents[document["_id"]] = document
        if len(documents) == len(ids):
            return documents
        time.sleep(0.5)
    missing = [i for i in ids if i not in documents]
    raise AssertionError(f"{len(missing)} of {len(ids)} not finished in {timeout}s: {missing[:5]}")


def recorded_per_execution(
    mesh: Mesh, ids: list[str], types: list[str], timeout: float = 60
) -> Counter[str]:
    """Distinct events of these types per execution, as the replay recorder stored them.

    The recorder hears an event after the function that acts on it: wait until every
    execution has at least one."""
    deadline = time.monotonic() + timeout
    while True:
        found = mesh.database["events"].find(
            {"execution_id": {"$in": ids}, "type": {"$in": types}}, {"execution_id": 1}
        )
        counts = Counter(event["execution_id"] for event in found)
        if len(counts) == len(ids) or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def wait_for_idle_admission(mesh: Mesh, timeout: float = 30) -> None:
    store = admission_store(mesh)
    deadline = time.monotonic() + timeout
    while (usage := store.usage()).running or usage.queued:
        assert time.monotonic() < deadline, f"admission still holds {usage}"
        time.sleep(0.2)


@pytest.mark.timeout(480)
def test_a_hundred_submissions_from_three_users_all_finish_within_the_limits(
    limited_mesh: Mesh,
) -> None:
    mesh = limited_mesh
    # Each run lasts a second, so that the 100 take at least 10 s at the global limit.
    script = "import time\ntime.sleep(1)\nprint(1)\n"
    users = ("ada", "bob", "cyd")
    priorities = itertools.cycle(("normal", "high", "normal", "low"))
    # Ada's burst first, so that she meets her own limit while the others still fit in the
    # global one (round robin alone would leave each user at 3 or 4 of the 10 slots).
    submitters = ["ada"] * 20 + [users[i % 3] for i in range(80)]
    requests = [(script, user, next(priorities)) for user in submitters]
    with Sampler(mesh) as sampler:
        ids = submit_all(mesh, requests)
        documents = wait_all(mesh, ids, timeout=300)
        wait_for_idle_admission(mesh)

    # Tens of samples over the >= 10 s at the limits (a sample reads the store and the pods).
    assert len(sampler.samples) >= 30, f"too few samples: {len(sampler.samples)}"
    assert max(s.running for s in sampler.samples) == GLOBAL, "the global limit was never reached"
    assert max(s.running for s in sampler.samples) <= GLOBAL
    assert max(max(s.per_user.values(), default=0) for s in sampler.samples) == PER_USER
    # The pods are read apart from the store (not at the same instant): each is held to the
    # limits on its own.
    owners = {i: user for i, (_, user, _) in zip(ids, requests, strict=True)}
    assert max(len(s.active_pods) for s in sampler.samples) <= GLOBAL
    assert max(len(s.active_pods) for s in sampler.samples) >= PER_USER, "no pods were sampled"
    over = [
        s for s in sampler.samples if max(s.pods_per_user(owners).values(), default=0) > PER_USER
    ]
    assert not over, f"a user had more than {PER_USER} pods: {over[:3]}"

    assert Counter(d["status"] for d in documents.values()) == {"completed": 100}
    assert all(d["result"]["stdout"]["data"] == "1\n" for d in documents.values())
    assert all(not d.get("late_results") for d in documents.values())
    stored = recorded_per_execution(mesh, ids, ["io.execmesh.result.stored"])
    assert set(stored) == set(ids) and set(stored.values()) == {1}, stored.most_common(3)
    assert {d["user_id"] for d in documents.values()} == set(users)


def test_under_a_backlog_high_priority_starts_before_normal_before_low(
    limited_mesh: Mesh,
) -> None:
    mesh = limited_mesh
    # Blockers fill every slot and end one by one, so each freed slot admits one waiter.
    blockers = [
        (f"import time\ntime.sleep({6 + 0.4 * i:.1f})\n", f"blocker{i % 2}", "normal")
        for i in range(GLOBAL)
    ]
    blocker_ids = submit_all(mesh, blockers)
    store = admission_store(mesh)
    deadline = time.monotonic() + 30
    while store.usage().running < GLOBAL:
        assert time.monotonic() < deadline, f"blockers not all admitted: {store.usage()}"
        time.sleep(0.05)
    # Submitted lowest first, each from a user of its own, so only the priority orders them.
    waiters = [
        ("print(1)\n", f"waiter{n}", priority)
        for n, priority in enumerate(["low", "normal", "high"] * 4)
    ]
    waiter_ids = submit_all(mesh, waiters)
    # The API answers before the coordinator has queued the run: wait for the whole backlog,
    # which must form while every blocker still holds its slot.
    deadline = time.monotonic() + 20
    while (usage := store.usage()).queued < len(waiters):
        assert usage.running == GLOBAL, f"a slot freed before the backlog formed: {usage}"
        assert time.monotonic() < deadline, f"the backlog did not form: {usage}"
        time.sleep(0.05)
    documents = wait_all(mesh, blocker_ids + waiter_ids, timeout=120)

    by_priority: dict[str, list[dict[str, Any]]] = {"high": [], "normal": [], "low": []}
    for execution_id, (_, _, priority) in zip(waiter_ids, waiters, strict=True):
        document = documents[execution_id]
        assert document["status"] == "completed", document
        by_priority[priority].append(document)
    # The queue is popped atomically in Redis, but accepted_at is the accepted event's time,
    # stamped after the pop: two slots freed within milliseconds of each other (a blocker's and
    # a finished waiter's) are filled by two coordinator threads whose stamps may land in
    # either order. A wrong order would be one or more slot frees apart (hundreds of ms).
    overlap = timedelta(milliseconds=50)
    for earlier, later in (("high", "normal"), ("normal", "low")):
        last = max(d["accepted_at"] for d in by_priority[earlier])
        first = min(d["accepted_at"] for d in by_priority[later])
        assert last <= first + overlap, f"a {later} run was accepted before a {earlier} one"
    last_high = max(d["started_at"] for d in by_priority["high"])
    first_low = min(d["started_at"] for d in by_priority["low"])
    assert last_high <= first_low, "a low-priority run started before a high-priority one"
    wait_for_idle_admission(mesh)
