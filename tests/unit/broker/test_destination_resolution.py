from __future__ import annotations

import pytest

from execmesh.broker.resolve import (
    Destination,
    DestinationError,
    parse_destination,
    resolve,
)
from execmesh.settings import LocalConfig

LOCAL = LocalConfig("execmesh", "default", 8080, 8081, {"saga": 8102})


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        (
            {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "saga"}},
            "http://127.0.0.1:8102",
        ),
        (
            {"ref": {"kind": "Service", "name": "saga"}, "uri": "/events"},
            "http://127.0.0.1:8102/events",
        ),
        ({"uri": "http://127.0.0.1:9999/hook"}, "http://127.0.0.1:9999/hook"),
    ],
)
def test_a_destination_resolves_to_a_local_url(raw: dict[str, object], url: str) -> None:
    assert resolve(parse_destination(raw, "subscriber"), LOCAL) == url


def test_a_service_missing_from_the_local_config_is_named_in_the_error() -> None:
    with pytest.raises(DestinationError, match="'coordinator'"):
        resolve(Destination("Service", "coordinator"), LOCAL)


@pytest.mark.parametrize(
    "raw",
    [
        {"ref": {"kind": "Broker", "name": "default"}},
        {"ref": {"kind": "Service"}},
        {"uri": "/relative"},
        {},
        "http://127.0.0.1/",
    ],
)
def test_destinations_that_cannot_be_resolved_locally_are_refused(raw: object) -> None:
    with pytest.raises(DestinationError):
        parse_destination(raw, "subscriber")


def test_a_destination_is_described_as_kn_shows_it() -> None:
    assert Destination("Service", "saga").describe() == "ksvc:saga"
    assert Destination(uri="http://h/x").describe() == "http://h/x"
