"""Publishing what was recorded: at once when the broker answers, later from the record if not.

``publish`` sends the ``execution.requested`` event of a record and marks it published. Its
event id is derived from the execution id, so publishing again after a crash between the send
and the mark is a duplicate that every function already ignores. ``run`` is the background
loop of each API replica; replicas racing on one record only cause such duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio

from api.records import RequestRecord, RequestRecords
from execmesh.errors import TransientError
from execmesh.mesh import OutgoingEvent, build_event

logger = logging.getLogger(__name__)

COMPONENT = "api"


class AsyncSender(Protocol):
    async def send(self, event: OutgoingEvent) -> None: ...


def requested_event(record: RequestRecord) -> OutgoingEvent:
    return build_event(
        record.request,
        component=COMPONENT,
        time=record.created_at,
        cause=f"api/{record.execution_id}",
    )


class Outbox:
    def __init__(
        self,
        records: RequestRecords,
        sender: AsyncSender,
        *,
        grace: timedelta = timedelta(seconds=10),
        interval_seconds: float = 1.0,
    ) -> None:
        self.records = records
        self.sender = sender
        # Records younger than this are still being published by the request that made them.
        self.grace = grace
        self.interval_seconds = interval_seconds
        self._marking: set[asyncio.Task[None]] = set()

    async def publish(self, record: RequestRecord, *, mark_later: bool = False) -> bool:
        """Send the record's event and mark it published; ``mark_later`` marks it in the
        background, off the request's time (an unmarked record is only sent once more)."""
        try:
            await self.sender.send(requested_event(record))
        except TransientError as error:
            logger.warning("execution %s left for the outbox: %s", record.execution_id, error)
            return False
        if mark_later:
            task = asyncio.get_running_loop().create_task(self._mark(record.execution_id))
            self._marking.add(task)
            task.add_done_callback(self._marking.discard)
        else:
            await self._mark(record.execution_id)
        return True

    async def _mark(self, execution_id: str) -> None:
        try:
            await anyio.to_thread.run_sync(self.records.mark_published, execution_id)
        except TransientError as error:
            logger.warning("execution %s sent but not marked: %s", execution_id, error)

    async def drain(self) -> int:
        """Publish what is waiting; how many were published."""
        before = datetime.now(UTC) - self.grace
        waiting = await anyio.to_thread.run_sync(self.records.unpublished, before)
        published = 0
        for record in waiting:
            if not await self.publish(record):
                break  # the broker is still down: try again on the next round
            published += 1
        if published:
            logger.info("outbox: published %d waiting execution(s)", published)
        return published

    async def run(self) -> None:
        while True:
            try:
                await self.drain()
            except TransientError as error:
                logger.warning("outbox: %s", error)
            except Exception:
                logger.exception("outbox round failed")
            await anyio.sleep(self.interval_seconds)
