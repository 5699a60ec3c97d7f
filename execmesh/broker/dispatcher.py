"""Delivering one trigger's events: filter, POST in binary mode, retry, reply, dead-letter.

Events with the same partition key are delivered one after the other, in offset order, as
Kafka stored them; events of different keys (and keyless events) go out concurrently. Each
event ends in exactly one way (filtered, delivered, dead-lettered or dropped) and only then
is it reported finished, which is what lets the consumer commit its offset.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

from execmesh.broker.cloudevent import Event, from_http, is_cloudevent_response, to_binary_headers
from execmesh.broker.delivery import Delivery, backoff, is_retriable
from execmesh.broker.filters import MATCH_ALL, Filter, matches
from execmesh.broker.ingress import EventLog
from execmesh.broker.kafka_binding import to_record
from execmesh.errors import ExecmeshError, InvalidEvent

log = logging.getLogger(__name__)

ERROR_DATA_LIMIT = 1024


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive lookups: lowercase names, or a CIMultiDict
    body: bytes


class SendFailed(Exception):
    """No HTTP response: connection refused or reset, or the timeout passed."""


class Sender(Protocol):
    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> Response: ...


class AiohttpSender:
    """One pooled client for every delivery of the process.

    aiohttp rather than httpx: on this hot path httpx's connection pool managed about 500
    requests/s, aiohttp over ten times that.
    """

    def __init__(self, max_connections: int = 256) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            auto_decompress=False,
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> Response:
        try:
            async with self._session.post(
                url,
                headers=headers,
                data=body,
                timeout=self._timeout(timeout),
                # An event without datacontenttype must not gain one on the way.
                skip_auto_headers=("Content-Type",),
                allow_redirects=False,
            ) as reply:
                content = await reply.read()
                reply_headers = reply.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            raise SendFailed(f"{type(error).__name__}: {error}") from error
        return Response(reply.status, reply_headers, content)

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        cached = self._timeouts.get(seconds)
        if cached is None:
            cached = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return cached

    async def aclose(self) -> None:
        await self._session.close()


Verdict = Literal["done", "reply", "retry", "fail"]


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None = None
    body: bytes = b""
    reply: Event | None = None
    reason: str = ""


def judge(response: Response) -> Outcome:
    """What the Knative Kafka broker makes of a subscriber's answer."""
    status, body = response.status, response.body
    if 200 <= status < 300:
        if is_cloudevent_response(response.headers):
            headers = {k.lower(): v for k, v in response.headers.items()}
            try:
                return Outcome("reply", status, body, from_http(headers, body))
            except InvalidEvent as error:
                return Outcome("fail", status, body, reason=f"invalid reply event: {error}")
        if not body:
            return Outcome("done", status)
        return Outcome("fail", status, body, reason="2xx answer with a body that is not an event")
    verdict: Verdict = "retry" if is_retriable(status) else "fail"
    return Outcome(verdict, status, body, reason=f"HTTP {status}")


def dead_letter(event: Event, destination: str, outcome: Outcome) -> Event:
    extensions = {"knativeerrordest": destination}
    if outcome.status is not None:
        extensions["knativeerrorcode"] = str(outcome.status)
    if outcome.body:
        extensions["knativeerrordata"] = base64.b64encode(outcome.body[:ERROR_DATA_LIMIT]).decode()
    return event.with_extensions(**extensions)


@dataclass(frozen=True)
class Route:
    """A trigger as the dispatcher needs it: resolved URLs and the merged delivery."""

    name: str
    filter: Filter
    subscriber: str
    delivery: Delivery
    dead_letter_sink: str | None
    reply_topic: str


Finished = Callable[[int, int], None]


class TriggerDispatcher:
    """Runs on the event loop; `submit` is called with each record the consumer polled."""

    def __init__(
        self,
        route: Route,
        sender: Sender,
        event_log: EventLog,
        finished: Finished,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.route = route
        self._sender = sender
        self._event_log = event_log
        self._finished = finished
        self._sleep = sleep
        self._takes_all = route.filter == MATCH_ALL
        self._lanes: dict[tuple[int, bytes], deque[tuple[int, Event | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.pending = 0

    @property
    def in_flight(self) -> int:
        """Records submitted and not yet finished, queued in a lane or being delivered."""
        return self.pending

    def submit_batch(self, batch: list[tuple[int, int, bytes | None, Event | None]]) -> None:
        for partition, offset, key, event in batch:
            self.submit(partition, offset, key, event)

    def submit(self, partition: int, offset: int, key: bytes | None, event: Event | None) -> None:
        """`event` is None for a record that holds no valid event: it is skipped."""
        self.pending += 1
        if key is None:
            self._spawn(self._one(partition, offset, event))
            return
        lane = self._lanes.get((partition, key))
        if lane is not None:
            lane.append((offset, event))
            return
        self._lanes[partition, key] = deque([(offset, event)])
        self._spawn(self._lane(partition, key))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lane(self, partition: int, key: bytes) -> None:
        lane = self._lanes[partition, key]
        try:
            while lane:
                offset, event = lane[0]
                await self._one(partition, offset, event)
                lane.popleft()
        finally:
            del self._lanes[partition, key]

    async def _one(self, partition: int, offset: int, event: Event | None) -> None:
        try:
            if event is not None and (
                self._takes_all or matches(self.route.filter, event.attributes)
            ):
                await self.process(event)
        except Exception:
            # A bug here must not wedge the partition's commits for ever; say so loudly.
            log.exception(
                "trigger %s: event at %d@%d abandoned", self.route.name, offset, partition
            )
        self.pending -= 1
        self._finished(partition, offset)

    async def process(self, event: Event) -> None:
        outcome = await self._deliver(self.route.subscriber, event)
        if outcome.verdict in ("done", "reply"):
            return
        log.warning(
            "trigger %s: event %s failed at %s: %s",
            self.route.name,
            event.get("id"),
            self.route.subscriber,
            outcome.reason,
        )
        if self.route.dead_letter_sink is None:
            log.error(
                "trigger %s: event %s dropped (no deadLetterSink)", self.route.name, event.get("id")
            )
            return
        letter = dead_letter(event, self.route.subscriber, outcome)
        final = await self._deliver(self.route.dead_letter_sink, letter, route_reply=False)
        if final.verdict not in ("done", "reply"):
            log.error(
                "trigger %s: event %s lost: dead-letter sink %s failed: %s",
                self.route.name,
                event.get("id"),
                self.route.dead_letter_sink,
                final.reason,
            )

    async def _deliver(self, url: str, event: Event, route_reply: bool = True) -> Outcome:
        """Delivery with the trigger's retries; the outcome of the last attempt."""
        delivery = self.route.delivery
        retry_number = 0
        while True:
            outcome = await self._attempt(url, event, route_reply)
            if outcome.verdict != "retry" or retry_number >= delivery.retry:
                return outcome
            retry_number += 1
            await self._sleep(backoff(delivery, retry_number))

    async def _attempt(self, url: str, event: Event, route_reply: bool) -> Outcome:
        headers = to_binary_headers(event)
        headers["prefer"] = "reply"
        try:
            timeout = self.route.delivery.timeout
            response = await self._sender.post(url, headers, event.data, timeout)
        except SendFailed as error:
            return Outcome("retry", reason=str(error))
        except ValueError as error:
            # The client refused the request as it is (a header it cannot send): no retry
            # helps, and the event is dead-lettered rather than dropped.
            return Outcome("fail", reason=f"cannot be sent: {error}")
        outcome = judge(response)
        if outcome.reply is not None and route_reply:
            try:
                await self._event_log.append(self.route.reply_topic, to_record(outcome.reply))
            except ExecmeshError as error:
                return Outcome("retry", reason=f"reply not stored: {error}")
        return outcome

    async def drain(self, grace: float) -> None:
        """Let in-flight events finish for up to `grace` seconds, then abandon the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
