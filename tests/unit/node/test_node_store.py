from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from execmesh.node.store import AlreadyExists, Expired, NotFound, Store


def configmap(name: str, namespace: str = "ns", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "data": {}}


def test_every_write_increases_the_resource_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    first = store.create("configmaps", configmap("a"))
    changed = store.update("configmaps", "ns", "a", lambda obj: obj["data"].update(k="v"))
    deleted = store.delete("configmaps", "ns", "a")
    versions = [int(o["metadata"]["resourceVersion"]) for o in (first, changed, deleted)]
    assert versions == [1, 2, 3]
    assert store.resource_version == 3


def test_duplicates_and_missing_objects_raise(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.create("configmaps", configmap("a"))
    with pytest.raises(AlreadyExists):
        store.create("configmaps", configmap("a"))
    store.create("configmaps", configmap("a", namespace="other"))
    store.create("pods", configmap("a"))
    for call in (
        lambda: store.get("configmaps", "ns", "b"),
        lambda: store.delete("configmaps", "ns", "b"),
        lambda: store.update("configmaps", "ns", "b", lambda _: None),
    ):
        with pytest.raises(NotFound):
            call()


def test_objects_and_the_version_counter_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.create("pods", configmap("a"))
    store.create("pods", configmap("b"))
    store.delete("pods", "ns", "b")
    store.save_run("uid-1", {"cgroups": {}})
    store.close()
    reopened = Store(tmp_path / "db")
    assert [p["metadata"]["name"] for p in reopened.list_objects("pods")] == ["a"]
    assert reopened.resource_version == 3
    assert reopened.runs() == [("uid-1", {"cgroups": {}})]
    assert reopened.create("pods", configmap("c"))["metadata"]["resourceVersion"] == "4"


def test_list_filters_by_kind_namespace_and_predicate_in_version_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.create("pods", configmap("b", tier="x"))
    store.create("pods", configmap("a", tier="y"))
    store.create("pods", configmap("c", namespace="other", tier="x"))
    store.create("configmaps", configmap("d", tier="x"))
    names = [p["metadata"]["name"] for p in store.list_objects("pods")]
    assert names == ["b", "a", "c"]
    in_ns = store.list_objects("pods", "ns", lambda o: o["metadata"]["labels"]["tier"] == "x")
    assert [p["metadata"]["name"] for p in in_ns] == ["b"]


def test_a_subscription_gets_the_backlog_after_its_version_then_live_events(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db")
    store.create("pods", configmap("a"))
    store.create("configmaps", configmap("x"))
    store.update("pods", "ns", "a", lambda _: None)
    subscription, backlog = store.subscribe("pods", since=1)
    assert [(e.type, e.resource_version) for e in backlog] == [("MODIFIED", 3)]
    store.delete("pods", "ns", "a")
    live = subscription.queue.get_nowait()
    assert live is not None and (live.type, live.resource_version) == ("DELETED", 4)


def test_a_version_older_than_the_kept_history_is_expired(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", history=3)
    for name in "abcde":
        store.create("pods", configmap(name))
    with pytest.raises(Expired):
        store.subscribe("pods", since=1)
    _, backlog = store.subscribe("pods", since=2)
    assert [e.resource_version for e in backlog] == [3, 4, 5]


def test_after_a_restart_only_versions_from_now_on_can_be_watched(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.create("pods", configmap("a"))
    store.create("pods", configmap("b"))
    store.close()
    reopened = Store(tmp_path / "db")
    with pytest.raises(Expired):
        reopened.subscribe("pods", since=1)
    _, backlog = reopened.subscribe("pods", since=2)
    assert backlog == []


def test_a_subscriber_that_falls_behind_is_closed_rather_than_buffering_forever(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db", queue_limit=3)
    subscription, _ = store.subscribe("pods", since=0)
    for name in "abcdef":
        store.create("pods", configmap(name))
    drained = []
    while not subscription.queue.empty():
        drained.append(subscription.queue.get_nowait())
    assert drained[-1] is None
    assert len(drained) <= 3
