"""A throwaway Kafka of a test's own, on free ports with its data under tmp_path, that the
test may stop and start again: the shared one on 9092 is never to be stopped.

Started and stopped with the same functions as `make services-up`, with a smaller heap.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker_harness import free_port

from execmesh import localservices
from execmesh.settings import Settings


@dataclass
class PrivateKafka:
    layout: localservices.Layout
    service: localservices.Service

    @property
    def bootstrap(self) -> str:
        return self.service.url

    def start(self) -> None:
        process: subprocess.Popen[bytes] | None = localservices.start(self.service, self.layout)
        localservices.wait_until_healthy(self.service, self.layout, process)

    def stop(self) -> None:
        localservices.stop(self.service, self.layout)


def private_kafka_at(home: Path) -> PrivateKafka:
    installed = localservices.Layout(data_dir=Settings.from_env().data_dir)
    layout = localservices.Layout(
        data_dir=home, kafka_port=free_port(), kafka_controller_port=free_port()
    )
    # The jars `make setup` installed, not a copy of them.
    layout.kafka_libs.parent.mkdir(parents=True)
    layout.kafka_libs.symlink_to(installed.kafka_libs)
    own = Settings(kafka_bootstrap_servers=f"127.0.0.1:{layout.kafka_port}")
    [kafka] = [s for s in localservices.services(own, layout) if s.name == "kafka"]
    small_heap = localservices.java_command(
        layout, "kafka.Kafka", str(layout.kafka_config), max_heap="256m"
    )
    # A URL other than the default reads as external; this one is ours to start and stop.
    service = dataclasses.replace(kafka, local=True, argv=small_heap)
    if (why := localservices.missing_installs(service, layout)) is not None:
        pytest.skip(f"no private Kafka: {why}")
    localservices.prepare(layout, [service])
    return PrivateKafka(layout, service)


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = private_kafka_at(tmp_path / "kafka-home")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()
