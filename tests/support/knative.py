"""The local Knative broker (``execmesh broker``) as tests run it, on manifests of their own."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kafka.admin import KafkaAdminClient

from execmesh.broker.manifests import load_eventing
from execmesh.settings import Settings
from tests.support.processes import BIN, running_process


@contextmanager
def running_broker(
    eventing: Path, port: int, env: Mapping[str, str], log_path: Path
) -> Iterator[None]:
    """``execmesh broker`` on the manifests in ``eventing``, ready; forgotten in Kafka after."""
    command = [str(BIN / "execmesh"), "broker", "--eventing-dir", str(eventing)]
    command += ["--port", str(port)]
    try:
        with running_process(command, env, log_path, f"http://127.0.0.1:{port}/health/readiness"):
            yield
    finally:
        forget_eventing(Settings.from_env(), eventing)


def forget_eventing(settings: Settings, eventing: Path) -> None:
    """Delete what a broker on these manifests leaves in Kafka: its topics, its triggers' groups."""
    loaded = load_eventing(eventing)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.delete_groups([trigger.consumer_group for trigger in loaded.triggers])
        admin.delete_topics([broker.topic for broker in loaded.brokers])
    finally:
        admin.close()
