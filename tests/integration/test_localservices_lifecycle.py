"""The real servers, started by our own lifecycle code in a scratch folder on free ports.

They run beside the shared services of `make services-up`, which this test never touches.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def scratch(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Layout, list[Service]]]:
    """Our own servers on free ports, started once for this module: a JVM start is slow."""
    installed = Layout(data_dir=settings.data_dir)
    tmp_path = tmp_path_factory.mktemp("services")
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
    # Non-default URLs read as external; these are ours to start.
    services = [dataclasses.replace(s, local=True) for s in localservices.services(own, layout)]
    started = time.monotonic()
    failures = localservices.up(services, layout)
    print(f"\ncold start of redis, ferretdb and kafka: {time.monotonic() - started:.1f} s")
    try:
        assert failures == []
        yield layout, services
    finally:
        localservices.down(services, layout)


def pids(layout: Layout, services: list[Service]) -> dict[str, int | None]:
    return {service.name: localservices.running_pid(service, layout) for service in services}


def test_up_starts_every_server_answering_its_health_check(
    scratch: tuple[Layout, list[Service]],
) -> None:
    layout, services = scratch
    assert all(localservices.healthy(service) is None for service in services)
    assert (layout.data("kafka") / "meta.properties").exists()
    assert all(pids(layout, services).values())


def test_a_second_up_uses_the_running_servers(scratch: tuple[Layout, list[Service]]) -> None:
    layout, services = scratch
    before = pids(layout, services)
    assert localservices.up(services, layout) == []
    assert pids(layout, services) == before


def test_down_stops_every_server_and_up_again_keeps_kafka_s_storage(
    scratch: tuple[Layout, list[Service]],
) -> None:
    layout, services = scratch
    cluster = (layout.data("kafka") / "meta.properties").read_text()
    localservices.down(services, layout)
    assert not any(pids(layout, services).values())
    for port in (layout.kafka_port, layout.mongodb_port, layout.redis_port):
        assert not port_open(port), port

    assert localservices.up(services, layout) == []
    assert (layout.data("kafka") / "meta.properties").read_text() == cluster
