"""On a cluster, what takes events is reachable from inside the cluster only.

Events carry no credentials: a subscriber reachable from outside would take forged ones (end
another user's execution, free admission slots, delete pods). Knative makes a Service
cluster-local by its `networking.knative.dev/visibility` label; `func deploy` sets the labels
of func.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from execmesh.broker.manifests import load_eventing
from execmesh.broker.resolve import Destination

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY = "networking.knative.dev/visibility"


def cluster_local_services() -> set[str]:
    found = set()
    for path in (ROOT / "functions").glob("*/func.yaml"):
        function = yaml.safe_load(path.read_text())
        labels = {label["key"]: label["value"] for label in function["deploy"]["labels"]}
        if labels.get(VISIBILITY) == "cluster-local":
            found.add(function["name"])
    for document in yaml.safe_load_all((ROOT / "api" / "deploy" / "service.yaml").read_text()):
        if document["kind"] == "Service" and _labels(document).get(VISIBILITY) == "cluster-local":
            found.add(document["metadata"]["name"])
    return found


def _labels(document: dict[str, Any]) -> dict[str, str]:
    return document["metadata"].get("labels") or {}


def test_every_subscriber_and_dead_letter_sink_is_cluster_local() -> None:
    eventing = load_eventing(ROOT / "eventing")
    destinations: list[Destination | None] = [t.subscriber for t in eventing.triggers]
    destinations += [t.delivery.dead_letter_sink for t in eventing.triggers]
    destinations += [b.delivery.dead_letter_sink for b in eventing.brokers]
    services = {d.ref_name for d in destinations if d is not None and d.ref_kind == "Service"}
    assert services, "no Service subscribers found: the manifests moved?"
    assert services - cluster_local_services() == set()


def test_the_public_api_takes_no_events_and_the_event_receiver_is_not_public() -> None:
    services = {
        document["metadata"]["name"]: document
        for document in yaml.safe_load_all((ROOT / "api" / "deploy" / "service.yaml").read_text())
        if document["kind"] == "Service"
    }

    def serves(name: str) -> str:
        (container,) = services[name]["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}["EXECMESH_API_SERVES"]

    assert (serves("api"), _labels(services["api"]).get(VISIBILITY)) == ("public", None)
    assert serves("api-events") == "events"
    assert "api-events" in cluster_local_services()
