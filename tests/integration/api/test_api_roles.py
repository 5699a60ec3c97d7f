"""The API's two parts: the public one takes no lifecycle events, the event receiver no calls.

Lifecycle events carry no credentials. Were the public Service to take them, anyone could end
another user's execution in its stream, free their own admission slots or use up a callback.
"""

from __future__ import annotations

import pytest

from execmesh.errors import ConfigError
from execmesh.settings import Settings
from tests.integration.api.conftest import Api
from tests.integration.api.test_api_sse import deliver, submitted

pytestmark = pytest.mark.services

COMPLETED = "io.execmesh.execution.completed"


@pytest.mark.parametrize("api", ["public"], indirect=True)
def test_the_public_part_refuses_a_forged_terminal_event_and_keeps_the_slot(api: Api) -> None:
    key, execution_id = submitted(api)
    assert deliver(api, COMPLETED, execution_id, {"exit_code": 0}) in (404, 405)

    record = api.gateway.records.get(execution_id)
    assert record is not None and record.status == "requested"
    active = api.client.get("/api/v1/executions?status=requested", headers=api.auth(key))
    assert [item["id"] for item in active.json()["items"]] == [execution_id]
    assert api.client.get("/health/readiness").status_code == 200


@pytest.mark.parametrize("api", ["events"], indirect=True)
def test_the_event_part_takes_events_and_serves_no_keyed_route(api: Api) -> None:
    assert deliver(api, COMPLETED, "e-unknown", {"exit_code": 0}) == 202
    key = api.key("alice")
    assert api.client.get("/api/v1/runtimes", headers=api.auth(key)).status_code == 404
    assert api.client.get("/health/readiness").status_code == 200


def test_the_whole_api_on_one_machine_takes_both() -> None:
    assert Settings.from_env({}).api_serves == "all"
    assert Settings.from_env({"EXECMESH_API_SERVES": "events"}).api_serves == "events"
    with pytest.raises(ConfigError, match="EXECMESH_API_SERVES"):
        Settings.from_env({"EXECMESH_API_SERVES": "everything"})
