"""coordinator: admission of executions; the decisions live in execmesh.admission.

execution.requested -> execution.rejected, or execution.accepted (with limits and a lease),
or execution.queued (with its position); a terminal event releases the slot and accepts the
next; execution.cancel_requested of a queued execution -> execution.cancelled; the ping
frees the slots of expired leases and accepts the next.

Run locally: functions-framework --target coordinator --source functions/coordinator/main.py
(`handle` is the same view, the target name `execmesh up` uses.)
"""

from __future__ import annotations

from execmesh.admission import Coordinator
from execmesh.mesh import Context, Emission, IncomingEvent, cloud_event_function


def on_event(event: IncomingEvent, ctx: Context[Coordinator]) -> list[Emission]:
    return ctx.deps.handle(event)


coordinator = cloud_event_function("coordinator", on_event, start=Coordinator.from_settings)
# `execmesh up` serves every function under the target name `handle`.
handle = coordinator
