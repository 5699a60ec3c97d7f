"""The local Knative Kafka broker: ingress, triggers, delivery, dead letters.

Run it with `execmesh broker`; list its wiring with `execmesh triggers`.
"""

from __future__ import annotations

from execmesh.broker.cloudevent import Event
from execmesh.broker.manifests import Broker, Eventing, Trigger, load_eventing

__all__ = ["Broker", "Event", "Eventing", "Trigger", "load_eventing"]
