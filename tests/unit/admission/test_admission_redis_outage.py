from __future__ import annotations

import pytest
import redis

from execmesh.admission import Capacity, RedisAdmissionStore, Ticket
from execmesh.errors import TransientError
from execmesh.events import Priority

# Nothing listens here: a Redis that is down.
UNREACHABLE = "redis://127.0.0.1:19798/0"


def test_an_unreachable_redis_is_a_transient_error_so_the_event_is_retried() -> None:
    client = redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=0.5)
    store = RedisAdmissionStore(client, Capacity())
    ticket = Ticket("ex-1", "alice", Priority.NORMAL, 100, 64, 1000, "{}")

    with pytest.raises(TransientError, match="admission script"):
        store.submit(ticket, "req-1", 0)
    with pytest.raises(TransientError):
        store.usage()
    client.close()
