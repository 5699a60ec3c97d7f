"""`execmesh triggers` against a running local broker and a live subscriber."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from broker_harness import BrokerProcess, Subscriber

from execmesh.broker import triggers_cli

pytestmark = pytest.mark.services


def service_trigger(name: str, service: str) -> dict[str, object]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": "default", "subscriber": {"ref": {"kind": "Service", "name": service}}},
    }


def test_triggers_lists_live_subscribers_ready_and_dead_ones_not(
    start_broker: Callable[..., BrokerProcess],
    subscriber: Subscriber,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = Subscriber().start()
    dead_port = dead.port
    dead.stop()
    broker = start_broker(
        [service_trigger("alive", "alive-svc"), service_trigger("gone", "gone-svc")],
        services={"alive-svc": subscriber.port, "gone-svc": dead_port},
    )
    code = triggers_cli.main(
        [
            "--eventing-dir",
            str(broker.directory / "eventing"),
            "--local-config",
            str(broker.directory / "local.yaml"),
        ]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "BROKER", "SINK", "AGE", "CONDITIONS", "READY", "REASON"]
    by_name = {line.split()[0]: line.split() for line in lines}
    assert by_name["alive"][2:] == [
        "ksvc:alive-svc",
        by_name["alive"][3],
        "3",
        "OK",
        "/",
        "3",
        "True",
    ]
    assert by_name["gone"][8] == "False"
    assert "SubscriberReady" in " ".join(by_name["gone"][9:])
    assert subscriber.at("/health/readiness")
