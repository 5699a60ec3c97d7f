"""The Broker and Trigger objects of `eventing/**/*.yaml`, validated into plain values.

Every other kind in those files (sources, sink bindings, services) belongs to someone else
and is skipped. Anything Knative's admission webhook would refuse is refused here, at load,
with the file and the object named, so a bad manifest never half-runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from execmesh.broker.delivery import Delivery, DeliverySpec, merge, parse_delivery
from execmesh.broker.filters import Filter, trigger_filter
from execmesh.broker.resolve import Destination, parse_destination
from execmesh.errors import ConfigError

API_VERSION = "eventing.knative.dev/v1"
DEFAULT_NAMESPACE = "execmesh"


@dataclass(frozen=True)
class Broker:
    namespace: str
    name: str
    delivery: DeliverySpec
    source: Path
    created: float

    @property
    def topic(self) -> str:
        return f"knative-broker-{self.namespace}-{self.name}"

    @property
    def path(self) -> str:
        return f"/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Trigger:
    namespace: str
    name: str
    broker: str
    filter: Filter
    subscriber: Destination
    delivery: DeliverySpec
    source: Path
    created: float

    @property
    def consumer_group(self) -> str:
        return f"knative-trigger-{self.namespace}-{self.name}"


@dataclass(frozen=True)
class Eventing:
    brokers: tuple[Broker, ...]
    triggers: tuple[Trigger, ...]

    def broker_of(self, trigger: Trigger) -> Broker:
        for broker in self.brokers:
            if (broker.namespace, broker.name) == (trigger.namespace, trigger.broker):
                return broker
        raise ConfigError(f"trigger {trigger.name}: no broker {trigger.broker!r}")

    def delivery_of(self, trigger: Trigger) -> Delivery:
        return merge(trigger.delivery, self.broker_of(trigger).delivery)

    def triggers_of(self, broker: Broker) -> tuple[Trigger, ...]:
        return tuple(
            t for t in self.triggers if (t.namespace, t.broker) == (broker.namespace, broker.name)
        )


def load_eventing(directory: Path, default_namespace: str = DEFAULT_NAMESPACE) -> Eventing:
    brokers: dict[tuple[str, str], Broker] = {}
    triggers: dict[tuple[str, str], Trigger] = {}
    for path, document in _documents(directory):
        kind = document.get("kind")
        if document.get("apiVersion") != API_VERSION or kind not in ("Broker", "Trigger"):
            continue
        name, namespace = _identity(document, path, default_namespace)
        where = f"{path}: {kind} {namespace}/{name}"
        created = path.stat().st_mtime
        try:
            if kind == "Broker":
                obj: Broker | Trigger = _broker(document, namespace, name, path, created)
                seen: dict[Any, Any] = brokers
            else:
                obj = _trigger(document, namespace, name, path, created)
                seen = triggers
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from error
        if (namespace, name) in seen:
            raise ConfigError(f"{where}: defined twice (also in {seen[namespace, name].source})")
        seen[namespace, name] = obj
    eventing = Eventing(tuple(brokers.values()), tuple(triggers.values()))
    for trigger in eventing.triggers:
        if (trigger.namespace, trigger.broker) not in brokers:
            raise ConfigError(
                f"{trigger.source}: Trigger {trigger.namespace}/{trigger.name}: "
                f"broker {trigger.broker!r} is not defined in {directory}"
            )
    return eventing


def _documents(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory of eventing manifests")
    for path in sorted(directory.rglob("*.yaml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        for document in documents:
            if isinstance(document, dict):
                yield path, document


def _identity(document: dict[str, Any], path: Path, default_namespace: str) -> tuple[str, str]:
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: {document.get('kind')} without metadata.name")
    return name, str(metadata.get("namespace") or default_namespace)


def _broker(
    document: dict[str, Any], namespace: str, name: str, path: Path, created: float
) -> Broker:
    spec = document.get("spec") or {}
    delivery = parse_delivery(spec.get("delivery"), "spec.delivery")
    return Broker(namespace, name, delivery, path, created)


def _trigger(
    document: dict[str, Any], namespace: str, name: str, path: Path, created: float
) -> Trigger:
    spec = document.get("spec") or {}
    broker = spec.get("broker")
    if not isinstance(broker, str) or not broker:
        raise ValueError("spec.broker: missing")
    if "subscriber" not in spec:
        raise ValueError("spec.subscriber: missing")
    return Trigger(
        namespace=namespace,
        name=name,
        broker=broker,
        filter=trigger_filter(spec.get("filter"), spec.get("filters")),
        subscriber=parse_destination(spec["subscriber"], "spec.subscriber"),
        delivery=parse_delivery(spec.get("delivery"), "spec.delivery"),
        source=path,
        created=created,
    )
