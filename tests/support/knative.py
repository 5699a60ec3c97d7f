from __future__ import annotations

from collections.abc import Iterable

from kafka.admin import KafkaAdminClient

from execmesh.settings import Settings


def forget_broker(settings: Settings, namespace: str, broker: str, triggers: Iterable[str]) -> None:
    """Delete what a test's own broker leaves in Kafka: its topic, its triggers' groups."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.delete_groups([f"knative-trigger-{namespace}-{trigger}" for trigger in triggers])
        admin.delete_topics([f"knative-broker-{namespace}-{broker}"])
    finally:
        admin.close()
