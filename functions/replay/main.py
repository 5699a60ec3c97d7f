"""replay: the event store (every event, recorded once) and replay sessions.

A Trigger with no filter delivers every event here: each is stored once, by its CloudEvent
identity. io.execmesh.replay.requested starts a session; the ping resumes sessions whose
runner died. Replayed events are new events (new ids) marked ``replayedfrom`` and
``replaysession``; the pipeline's functions ignore them unless the session asked to
reprocess.

Run locally: functions-framework --target replay --source functions/replay/main.py
"""

from __future__ import annotations

from execmesh.mesh import Context, Emission, IncomingEvent, cloud_event_function
from execmesh.replay.service import ReplayService


def on_event(event: IncomingEvent, ctx: Context[ReplayService]) -> list[Emission]:
    return ctx.deps.handle(event)


# No idempotency markers: each event is stored under its own identity, a session is created
# once under its id and claimed only while no live runner holds it, and nothing is emitted.
replay = cloud_event_function(
    "replay", on_event, start=ReplayService.from_settings, open_types=True, markers=False
)
# `execmesh up` serves every function under the target name `handle`.
handle = replay
