"""result_processor: the execution's document in MongoDB; the rules live in execmesh.results.

execution.requested / queued / accepted, pod.running -> the status advances (never back);
execution.completed / failed / timed_out / cancelled / rejected -> the first one becomes the
result (later ones are recorded as late), then pod.delete_requested (not after a rejection)
and result.stored.

Run locally:
functions-framework --target result_processor --source functions/result_processor/main.py
(`handle` is the same view, the target name `execmesh up` uses.)
"""

from __future__ import annotations

from execmesh.mesh import Context, Emission, IncomingEvent, cloud_event_function
from execmesh.results.processor import ResultProcessor


def on_event(event: IncomingEvent, ctx: Context[ResultProcessor]) -> list[Emission]:
    return ctx.deps.handle(event)


result_processor = cloud_event_function(
    "result-processor", on_event, start=ResultProcessor.from_settings
)
# `execmesh up` serves every function under the target name `handle`.
handle = result_processor
