"""Callback webhooks: an HMAC-signed POST to the execution's ``callback_url`` once it ended.

The body is the execution as ``GET /executions/{id}`` shows it. ``X-Execmesh-Signature`` is
``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the callback secret, so a receiver
can check both origin and freshness. Delivery is retried with exponential backoff on any
network error, unresolved host or non-2xx answer; one replica sends it (a Redis marker per
execution), even when the terminal event is redelivered. Each attempt goes only to an address
the ``CallbackPolicy`` passed just then, redirects are never followed, and a refused address
ends the delivery at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx
import redis.asyncio as redis

from api.callback_policy import CallbackPolicy, RefusedCallback, UnresolvedHost
from api.ratelimit import PREFIX

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Execmesh-Signature"
ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 0.5
MARKER_SECONDS = 86400
# One attempt, connection to status line: the client's own timeouts bound each read only, so
# a receiver trickling its answer would otherwise hold the delivery forever.
ATTEMPT_SECONDS = 10.0


def signature(secret: str, body: bytes, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, now: int, tolerance: int = 300) -> bool:
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not parts.get("t", "").isdigit() or abs(now - int(parts["t"])) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, body, int(parts["t"])), header)


class Callbacks:
    def __init__(
        self,
        client: redis.Redis,
        secret: str,
        *,
        policy: CallbackPolicy | None = None,
        http: httpx.AsyncClient | None = None,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        attempt_seconds: float = ATTEMPT_SECONDS,
    ) -> None:
        self.redis = client
        self.secret = secret
        self.attempt_seconds = attempt_seconds
        self.policy = policy or CallbackPolicy()
        self.http = http or new_http_client()
        self.first_backoff = first_backoff

    async def claim(self, execution_id: str) -> bool:
        """Whether this replica is the one to call back for ``execution_id``."""
        key = f"{PREFIX}:callback:{execution_id}"
        return bool(await self.redis.set(key, "1", nx=True, ex=MARKER_SECONDS))

    async def deliver(self, url: str, body: Callable[[], Awaitable[bytes]]) -> bool:
        content = await body()
        delay = self.first_backoff
        for attempt in range(1, ATTEMPTS + 1):
            try:
                problem = await self._attempt(url, content)
            except RefusedCallback as refusal:
                logger.error("callback %s refused, not sent: %s", url, refusal)
                return False
            if problem is None:
                return True
            logger.warning("callback %s attempt %d: %s", url, attempt, problem)
            if attempt < ATTEMPTS:
                await anyio.sleep(delay)
                delay *= 2
        logger.error("callback %s: gave up after %d attempts", url, ATTEMPTS)
        return False

    async def _attempt(self, url: str, content: bytes) -> str | None:
        """None once the receiver took it, else what went wrong (worth another attempt)."""
        try:
            request = await self.policy.pin(url)
        except UnresolvedHost as error:
            return str(error)
        headers = {**request.headers, "Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, content, int(time.time()))
        outgoing = self.http.build_request(
            "POST", request.url, content=content, headers=headers, extensions=request.extensions
        )
        try:
            with anyio.fail_after(self.attempt_seconds):
                # Only the status matters: the answer's body is never read, whatever its size.
                response = await self.http.send(outgoing, stream=True, follow_redirects=False)
                await response.aclose()
        except TimeoutError:
            return f"no answer within {self.attempt_seconds:g} s"
        except httpx.HTTPError as error:
            return repr(error)
        return None if response.is_success else f"answered {response.status_code}"

    async def aclose(self) -> None:
        await self.http.aclose()


def new_http_client() -> httpx.AsyncClient:
    # No kept-alive connections: one to a pinned address was verified for one host name only.
    return httpx.AsyncClient(
        timeout=10.0, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
    )
