"""The API app on the real MongoDB and Redis, with the broker replaced by a recording sender."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import pytest
import redis
from pymongo.database import Database
from starlette.testclient import TestClient

from api.app import create_app
from api.gateway import Gateway
from api.outbox import Outbox
from execmesh.client.keys import KeyStore, Role
from execmesh.errors import TransientError
from execmesh.mesh import OutgoingEvent
from execmesh.settings import Settings

REDIS_DB = 12


class FakeBroker:
    """Takes events like the broker ingress, or refuses them all while ``down``."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEvent] = []
        self.down = False

    async def send(self, event: OutgoingEvent) -> None:
        if self.down:
            raise TransientError("broker down (test)")
        self.sent.append(event)

    async def aclose(self) -> None:
        pass

    def of_type(self, ce_type: str) -> list[OutgoingEvent]:
        return [event for event in self.sent if event.type == ce_type]


@dataclasses.dataclass
class Api:
    client: TestClient
    gateway: Gateway
    broker: FakeBroker
    database: Database[dict[str, Any]]

    def key(self, user: str, *, admin: bool = False) -> str:
        return KeyStore(self.database).create(user, Role.ADMIN if admin else Role.USER).key

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(
    request: pytest.FixtureRequest, mongo_database: Database[dict[str, Any]], settings: Settings
) -> Iterator[Api]:
    """The whole API; ``indirect`` parametrization picks a part (``EXECMESH_API_SERVES``)."""
    redis_url = settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    test_settings = dataclasses.replace(
        settings,
        mongodb_database=mongo_database.name,
        redis_url=redis_url,
        k_sink="http://127.0.0.1:9/unused",
        api_rate_per_second=5,
        api_max_active_per_user=3,
        api_max_streams_per_user=2,
        api_max_body_bytes=64 * 1024,
        api_callback_secret="s3cret",
        # The receivers of the callback tests listen on this machine.
        api_callback_allowed_networks=(ip_network("127.0.0.0/8"),),
        api_serves=getattr(request, "param", "all"),
    )
    broker = FakeBroker()
    made: list[Gateway] = []

    def make_gateway(s: Settings) -> Gateway:
        gateway = Gateway.from_settings(s)
        gateway.outbox = Outbox(gateway.records, broker, interval_seconds=0.1)
        gateway.sender = broker  # type: ignore[assignment]
        gateway.live.keepalive_seconds = 0.5
        made.append(gateway)
        return gateway

    app = create_app(test_settings, make_gateway, run_outbox=False)
    with TestClient(app, base_url="http://testserver") as client:
        yield Api(client, made[0], broker, mongo_database)
    redis.Redis.from_url(redis_url).flushdb()
