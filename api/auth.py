"""Who is calling: a bearer API key, looked up by its hash, and the caller's rate limit.

Keys found are cached for ``ttl_seconds`` per replica (a revoked key stops working within that
time); keys not found are never cached, so a key works as soon as it is created.
"""

from __future__ import annotations

import time

import anyio
from starlette.requests import Request

from api.problems import Problem
from execmesh.client.keys import KeyStore, Principal, hash_key

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="execmesh"'}


class Authenticator:
    def __init__(self, keys: KeyStore, *, ttl_seconds: float = 30.0) -> None:
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def principal(self, request: Request) -> Principal:
        key = bearer_token(request.headers.get("authorization"))
        hashed = hash_key(key)
        cached = self._cache.get(hashed)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        found = await anyio.to_thread.run_sync(self.keys.lookup, key)
        if found is None:
            raise Problem(401, "the API key is not valid", code="invalid_key", headers=CHALLENGE)
        self._cache[hashed] = (found, time.monotonic() + self.ttl_seconds)
        return found


def bearer_token(header: str | None) -> str:
    if not header:
        raise Problem(
            401,
            "missing credentials: send 'Authorization: Bearer <API key>'",
            code="missing_credentials",
            headers=CHALLENGE,
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "use the Bearer scheme: 'Authorization: Bearer <API key>'",
            code="invalid_credentials",
            headers=CHALLENGE,
        )
    return token.strip()


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Problem(403, "this endpoint is for admin keys only", code="forbidden")
