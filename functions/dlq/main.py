"""dlq: the dead-letter sink of every Trigger; keeps, retries by policy, then parks.

A dead letter (any event carrying ``knativeerrordest``) is stored with its error details;
each ping retries the letters that are due, to their original destination with their
original id, and parks what exhausted its policy (emitting dlq.parked).

Run locally: functions-framework --target dlq --source functions/dlq/main.py
"""

from __future__ import annotations

from datetime import timedelta

from execmesh.deadletters.service import DeadLetterOffice
from execmesh.mesh import Context, Emission, IncomingEvent, cloud_event_function


def on_event(event: IncomingEvent, ctx: Context[DeadLetterOffice]) -> list[Emission]:
    return ctx.deps.handle(event)


# The framework's marker is per event (source, id), but one event dead-lettered by two
# Triggers is two letters (one per destination): the store keeps each once by itself, so the
# marker is made to lapse at once instead of hiding the second letter.
NO_MARKER = timedelta(milliseconds=1)

dlq = cloud_event_function(
    "dlq",
    on_event,
    start=DeadLetterOffice.from_settings,
    open_types=True,
    idempotency_ttl=NO_MARKER,
)
# `execmesh up` serves every function under the target name `handle`.
handle = dlq
