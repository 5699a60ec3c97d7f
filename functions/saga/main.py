"""saga: one state machine per execution; the transitions live in execmesh.saga.

execution.accepted -> pod.create_requested (or, after an early cancel, execution.cancelled);
pod.created / pod.running advance it; a terminal event ends it (saga.completed, or
pod.delete_requested + saga.compensated for a failure); execution.cancel_requested ->
pod.delete_requested, then pod.deleted -> execution.cancelled + saga.compensated; the ping ends
sagas past their deadline: a pod that never ran within the start-up budget with
execution.failed (startup_timeout), a running one past its timeout with execution.timed_out,
each + pod.delete_requested + saga.compensated.

Run locally: functions-framework --target saga --source functions/saga/main.py
(`handle` is the same view, the target name `execmesh up` uses.)
"""

from __future__ import annotations

from execmesh.mesh import Context, Emission, IncomingEvent, cloud_event_function
from execmesh.saga.engine import SagaService


def on_event(event: IncomingEvent, ctx: Context[SagaService]) -> list[Emission]:
    return ctx.deps.handle(event)


saga = cloud_event_function("saga", on_event, start=SagaService.from_settings)
# `execmesh up` serves every function under the target name `handle`.
handle = saga
