"""k8s_worker: makes and unmakes an execution's pod through the `kubernetes` client.

pod.create_requested -> ConfigMap, NetworkPolicy (once per namespace), Pod -> pod.created,
or execution.failed when the runtime is unknown or the API refuses;
pod.delete_requested -> Pod and ConfigMap deleted -> pod.deleted.

Run locally: functions-framework --target k8s_worker --source functions/k8s_worker/main.py
(`handle` is the same view, the target name `execmesh up` uses.)
"""

from __future__ import annotations

from execmesh.errors import InvalidEvent
from execmesh.events import PodCreateRequested, PodDeleteRequested
from execmesh.kube.client import build_clients
from execmesh.kube.worker import PodWorker
from execmesh.mesh import Context, Emission, IncomingEvent, cloud_event_function
from execmesh.settings import Settings


def start(settings: Settings) -> PodWorker:
    return PodWorker(build_clients(settings))


def on_pod_request(event: IncomingEvent, ctx: Context[PodWorker]) -> list[Emission]:
    payload = event.payload
    if isinstance(payload, PodCreateRequested):
        return [Emission(ctx.deps.create(payload))]
    if isinstance(payload, PodDeleteRequested):
        return [Emission(ctx.deps.delete(payload))]
    raise InvalidEvent(f"k8s-worker does not handle {event.type}")


k8s_worker = cloud_event_function("k8s-worker", on_pod_request, start=start)
# `execmesh up` serves every function under the target name `handle`.
handle = k8s_worker
