"""The real servers, started by our own lifecycle code in a scratch folder on free ports.

They run beside the shared services of `make services-up`, which this test never touches.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from execmesh import localservices
from execmesh.localservices import Layout, Service
from execmesh.settings import Settings

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def scratch(settings: Settings, tmp_path: Path) -> Iterator[tuple[Layout, list[Service]]]:
    """A layout of our own on free ports, sharing only the installed binaries and jars."""
    installed = Layout(data_dir=settings.data_dir)
    layout = Layout(
        data_dir=tmp_path,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mongodb_port=free_port(),
        redis_port=free_port(),
    )
    layout.kafka_libs.parent.mkdir(parents=True)
    layout.kafka_libs.symlink_to(installed.kafka_libs)
    layout.bin_dir.symlink_to(installed.bin_dir)
    own = Settings(
        mongodb_url=f"mongodb://127.0.0.1:{layout.mongodb_port}/",
        kafka_bootstrap_servers=f"127.0.0.1:{layout.kafka_port}",
        redis_url=f"redis://127.0.0.1:{layout.redis_port}/0",
    )
    services = [
        # Non-default URLs read as external; these are ours to start.
        dataclasses.replace(service, local=True)
        for service in localservices.services(own, layout)
    ]
    try:
        yield layout, services
    finally:
        localservices.down(services, layout)


def test_up_starts_every_server_healthy_and_down_stops_them(
    scratch: tuple[Layout, list[Service]],
) -> None:
    layout, services = scratch
    started = time.monotonic()
    assert localservices.up(services, layout) == []
    print(f"cold start of redis, ferretdb and kafka: {time.monotonic() - started:.1f} s")
    assert all(localservices.healthy(service) is None for service in services)
    assert (layout.data("kafka") / "meta.properties").exists()
    pids = {s.name: localservices.running_pid(s, layout) for s in services}
    assert all(pids.values()), pids

    localservices.down(services, layout)
    assert all(localservices.running_pid(s, layout) is None for s in services)
    for port in (layout.kafka_port, layout.mongodb_port, layout.redis_port):
        assert not port_open(port), port


def test_a_second_up_adopts_the_running_servers_and_keeps_their_data(
    scratch: tuple[Layout, list[Service]],
) -> None:
    layout, services = scratch
    assert localservices.up(services, layout) == []
    cluster_id = (layout.data("kafka") / "meta.properties").read_text()
    pids = {s.name: localservices.running_pid(s, layout) for s in services}

    assert localservices.up(services, layout) == []
    assert {s.name: localservices.running_pid(s, layout) for s in services} == pids

    localservices.down(services, layout)
    assert localservices.up(services, layout) == []
    assert (layout.data("kafka") / "meta.properties").read_text() == cluster_id
