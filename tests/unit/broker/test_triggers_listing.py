from __future__ import annotations

from pathlib import Path

from execmesh.broker.manifests import load_eventing
from execmesh.broker.triggers_cli import COLUMNS, age, rows, table
from execmesh.settings import LocalConfig

MANIFESTS = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: ns}
spec:
  delivery: {deadLetterSink: {ref: {kind: Service, name: dlq}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: up, namespace: ns}
spec: {broker: default, subscriber: {ref: {kind: Service, name: up}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: down, namespace: ns}
spec: {broker: default, subscriber: {ref: {kind: Service, name: down}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: unknown, namespace: ns}
spec: {broker: default, subscriber: {ref: {kind: Service, name: nowhere}}}
"""

LOCAL = LocalConfig("ns", "default", 9000, 9001, {"up": 9100, "down": 9101, "dlq": 9102})


def probe(url: str) -> str | None:
    return "ConnectError" if ":9101" in url else None


def test_ready_reflects_whether_the_subscriber_answers(tmp_path: Path) -> None:
    (tmp_path / "eventing.yaml").write_text(MANIFESTS)
    listed = {r.name: r for r in rows(load_eventing(tmp_path), LOCAL, probe)}
    assert listed["up"].ready
    assert listed["up"].cells()[2:] == ("ksvc:up", listed["up"].age, "4 OK / 4", "True", "")
    assert not listed["down"].ready
    assert listed["down"].reason == "SubscriberReady: ConnectError"
    assert not listed["unknown"].ready
    assert listed["unknown"].reason.startswith("SubscriberResolved: service 'nowhere'")


def test_the_broker_not_answering_makes_every_trigger_not_ready(tmp_path: Path) -> None:
    (tmp_path / "eventing.yaml").write_text(MANIFESTS)
    listed = rows(load_eventing(tmp_path), LOCAL, lambda url: "down" if ":9000" in url else None)
    assert [r.ready for r in listed] == [False, False, False]
    assert listed[0].reason == "BrokerReady: down"


def test_the_table_has_kn_columns_aligned() -> None:
    text = table([COLUMNS, ("a-long-name", "default", "ksvc:x", "1m", "4 OK / 4", "True", "")])
    header, line = text.splitlines()
    assert header.split() == list(COLUMNS)
    assert header.index("BROKER") == line.index("default")


def test_age_is_shown_in_the_largest_whole_unit() -> None:
    assert [age(s) for s in (5, 90, 7200, 200000)] == ["5s", "1m", "2h", "2d"]
