from __future__ import annotations

from pathlib import Path

import pytest

from execmesh.broker.filters import AttributesFilter, Exact, matches
from execmesh.broker.manifests import load_eventing
from execmesh.broker.resolve import Destination
from execmesh.errors import ConfigError

BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: execmesh
  annotations: {eventing.knative.dev/broker.class: Kafka}
spec:
  delivery:
    retry: 4
    backoffDelay: PT0.5S
    deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dlq}}
"""

TRIGGERS = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: coordinator, namespace: execmesh}
spec:
  broker: default
  filter: {attributes: {type: io.execmesh.execution.requested}}
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: coordinator}}
  delivery: {retry: 1, backoffPolicy: linear}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: tick}
spec: {schedule: "* * * * *"}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: saga}
spec:
  broker: default
  filters: [{prefix: {type: io.execmesh.pod.}}]
  subscriber: {uri: "http://127.0.0.1:9/saga"}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_brokers_and_triggers_are_loaded_from_every_yaml_and_other_kinds_skipped(
    tmp_path: Path,
) -> None:
    write(tmp_path, "broker.yaml", BROKER)
    write(tmp_path, "triggers/pipeline.yaml", TRIGGERS)
    eventing = load_eventing(tmp_path)
    assert [b.name for b in eventing.brokers] == ["default"]
    assert eventing.brokers[0].topic == "knative-broker-execmesh-default"
    coordinator, saga = eventing.triggers
    assert coordinator.consumer_group == "knative-trigger-execmesh-coordinator"
    assert coordinator.filter == AttributesFilter({"type": "io.execmesh.execution.requested"})
    assert coordinator.subscriber == Destination("Service", "coordinator")
    assert saga.namespace == "execmesh"
    assert matches(saga.filter, {"type": "io.execmesh.pod.created"})
    assert not matches(saga.filter, {"type": "io.execmesh.execution.queued"})


def test_a_trigger_delivery_is_merged_over_its_broker_delivery(tmp_path: Path) -> None:
    write(tmp_path, "broker.yaml", BROKER)
    write(tmp_path, "triggers.yaml", TRIGGERS)
    eventing = load_eventing(tmp_path)
    delivery = eventing.delivery_of(eventing.triggers[0])
    assert (delivery.retry, delivery.backoff_policy, delivery.backoff_delay) == (1, "linear", 0.5)
    assert delivery.dead_letter_sink == Destination("Service", "dlq")
    assert eventing.delivery_of(eventing.triggers[1]).retry == 4


def test_a_trigger_with_an_unsupported_dialect_is_refused_naming_file_and_trigger(
    tmp_path: Path,
) -> None:
    write(tmp_path, "broker.yaml", BROKER)
    path = write(
        tmp_path,
        "bad.yaml",
        TRIGGERS.replace("[{prefix: {type: io.execmesh.pod.}}]", "[{cesql: \"type = 'x'\"}]"),
    )
    with pytest.raises(ConfigError) as refused:
        load_eventing(tmp_path)
    assert str(path) in str(refused.value)
    assert "Trigger execmesh/saga" in str(refused.value)
    assert "cesql" in str(refused.value)


def test_a_bad_duration_is_refused_at_load(tmp_path: Path) -> None:
    write(tmp_path, "broker.yaml", BROKER.replace("PT0.5S", "half a second"))
    with pytest.raises(ConfigError, match=r"Broker execmesh/default: spec\.delivery\.backoffDelay"):
        load_eventing(tmp_path)


def test_a_trigger_naming_an_unknown_broker_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "triggers.yaml", TRIGGERS)
    with pytest.raises(ConfigError, match="broker 'default' is not defined"):
        load_eventing(tmp_path)


def test_the_same_trigger_defined_twice_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "broker.yaml", BROKER)
    write(tmp_path, "a.yaml", TRIGGERS)
    write(tmp_path, "b.yaml", TRIGGERS)
    with pytest.raises(ConfigError, match="defined twice"):
        load_eventing(tmp_path)


def test_filter_attributes_keep_knative_semantics_after_loading(tmp_path: Path) -> None:
    write(tmp_path, "broker.yaml", BROKER)
    write(
        tmp_path,
        "t.yaml",
        TRIGGERS.replace(
            "filters: [{prefix: {type: io.execmesh.pod.}}]", "filters: [{exact: {type: a}}]"
        ),
    )
    assert load_eventing(tmp_path).triggers[1].filter.filters == (Exact("type", "a"),)  # type: ignore[union-attr]


def test_the_projects_broker_manifest_loads_with_a_dead_letter_sink(tmp_path: Path) -> None:
    project_broker = Path(__file__).resolve().parents[3] / "eventing" / "broker.yaml"
    write(tmp_path, "broker.yaml", project_broker.read_text())
    (broker,) = load_eventing(tmp_path).brokers
    assert (broker.namespace, broker.name) == ("execmesh", "default")
    assert broker.delivery.dead_letter_sink == Destination("Service", "dlq")
