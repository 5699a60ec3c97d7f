"""Everything a request needs, built once per process from ``Settings`` (lifespan state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from pymongo.database import Database

from api.auth import Authenticator
from api.callback_policy import CallbackPolicy
from api.callbacks import Callbacks
from api.outbox import Outbox
from api.ratelimit import Protection
from api.records import RequestRecords
from api.sse import LiveEvents
from execmesh.admission.limits import ResolvedRuntime, ServerLimits
from execmesh.admission.redis_store import RedisAdmissionStore
from execmesh.admission.store import Capacity
from execmesh.client.keys import KeyStore
from execmesh.mesh import AsyncHttpSender
from execmesh.mongo import connect
from execmesh.pods import runtimes
from execmesh.pods.runtimes import Backend, Runtime
from execmesh.results import MongoExecutionStore, MongoOutputStore
from execmesh.settings import Settings

PUBLISH_TIMEOUT_SECONDS = 3.0


@dataclass
class Gateway:
    settings: Settings
    database: Database[dict[str, Any]]
    redis: aioredis.Redis
    records: RequestRecords
    executions: MongoExecutionStore
    outputs: MongoOutputStore
    auth: Authenticator
    protection: Protection
    live: LiveEvents
    outbox: Outbox
    sender: AsyncHttpSender
    server: ServerLimits
    admission: RedisAdmissionStore
    backend: Backend
    callbacks: Callbacks

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        database = connect(settings)
        client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=30.0, socket_connect_timeout=2.0
        )
        records = RequestRecords(database)
        sender = AsyncHttpSender(settings.k_sink, timeout=PUBLISH_TIMEOUT_SECONDS)
        server = ServerLimits.from_settings(settings)
        # A slot whose terminal event never arrived lapses after the longest possible run.
        stale_ms = int((server.max_timeout_seconds + settings.lease_seconds + 60) * 1000)
        sync_redis = redis.Redis.from_url(settings.redis_url, socket_timeout=2.0)
        return cls(
            settings=settings,
            database=database,
            redis=client,
            records=records,
            executions=MongoExecutionStore(database),
            outputs=MongoOutputStore(database),
            auth=Authenticator(KeyStore(database)),
            protection=Protection(
                client,
                rate_per_second=settings.api_rate_per_second,
                max_active=settings.api_max_active_per_user,
                stale_after_ms=stale_ms,
                max_streams=settings.api_max_streams_per_user,
            ),
            live=LiveEvents(client),
            outbox=Outbox(records, sender),
            sender=sender,
            server=server,
            admission=RedisAdmissionStore(sync_redis, Capacity.from_settings(settings)),
            backend=cast(Backend, settings.pod_backend),
            callbacks=Callbacks(
                client,
                settings.api_callback_secret,
                policy=CallbackPolicy(settings.api_callback_allowed_networks),
            ),
        )

    def runtimes(self) -> tuple[Runtime, ...]:
        return runtimes.available(self.backend)

    def resolve(self, language: str, version: str) -> ResolvedRuntime:
        return runtimes.resolve(language, version, self.backend)

    async def aclose(self) -> None:
        await self.sender.aclose()
        await self.callbacks.aclose()
        await self.redis.aclose()
        self.admission.close()
        self.database.client.close()
