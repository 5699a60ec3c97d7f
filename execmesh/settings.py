"""Every setting execmesh reads, from the environment, in one place.

Clients are built from one ``Settings`` object; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

import yaml

from execmesh.errors import ConfigError

# What the API process serves: both; the keyed /api/v1 routes; the lifecycle event receiver.
API_ROLES = ("all", "public", "events")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    mongodb_url: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "execmesh"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    k_sink: str = ""
    k_ce_overrides: str = ""
    eventing_dir: Path = PROJECT_ROOT / "eventing"
    local_config_path: Path = PROJECT_ROOT / "config" / "local.yaml"
    data_dir: Path = PROJECT_ROOT / ".local"
    # The local node's privilege-dropping launcher, a build product of `make setup`.
    podexec_path: Path = PROJECT_ROOT / ".local" / "bin" / "execmesh-podexec"
    kubeconfig: str = ""
    # Where pods run: "local" (the local node of config/local.yaml) or "cluster" (KUBECONFIG or
    # the in-cluster service account).
    pod_backend: str = "local"
    pod_namespace: str = "execmesh"
    # The saga gives a running program its timeout plus this grace before ending it as timed
    # out; before the pod runs, it waits this start-up budget from the acceptance, then ends
    # the run as failed (startup_timeout).
    saga_grace_seconds: float = 30.0
    saga_startup_seconds: float = 300.0
    saga_batch_size: int = 100
    # Finished sagas (and cancels that never met an acceptance) are purged after this.
    saga_retention_seconds: float = 86400.0
    # Admission (coordinator): concurrency limits and the cpu/memory budget of what runs.
    max_per_user: int = 5
    max_global: int = 10
    cpu_budget_millis: int = 10_000
    memory_budget_mb: int = 4096
    # The most a request may ask for, and what it gets when it asks for nothing.
    max_timeout_seconds: float = 300.0
    max_memory_mb: int = 1024
    max_cpu_millis: int = 2000
    max_output_bytes: int = 4 * 1024 * 1024
    max_script_bytes: int = 32 * 1024
    default_timeout_seconds: float = 10.0
    default_memory_mb: int = 256
    default_cpu_millis: int = 500
    default_output_bytes: int = 1024 * 1024
    # A slot is leased for the saga's longest run (start-up budget + timeout + grace) plus
    # this; a run lost by every function frees its slot on expiry.
    lease_seconds: float = 120.0
    # A multiplier on the dlq's retry delays (tests make them fast).
    dlq_delay_scale: float = 1.0
    # API gateway: per-user requests per second, executions in flight per user, live event
    # streams open per user (each holds a Redis connection), body size.
    api_rate_per_second: int = 20
    api_max_active_per_user: int = 50
    api_max_streams_per_user: int = 10
    api_max_body_bytes: int = 1024 * 1024
    # Signs callback webhooks (HMAC-SHA256); empty: callbacks are sent unsigned.
    api_callback_secret: str = ""
    # Networks callbacks may reach besides public addresses (the local mesh allows loopback).
    api_callback_allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    # Which routes the API process serves (API_ROLES): on a cluster the public Service serves
    # /api/v1 and a cluster-local one the lifecycle events, which carry no credentials.
    api_serves: str = "all"
    # Events a function process handles at once (THREADS, as functions-framework's Flask
    # server reads it): handlers block on their stores, so each runs on a thread of its own.
    handler_threads: int = (os.cpu_count() or 1) * 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            mongodb_url=env.get("MONGODB_URL", defaults.mongodb_url),
            mongodb_database=env.get("MONGODB_DATABASE", defaults.mongodb_database),
            kafka_bootstrap_servers=env.get(
                "KAFKA_BOOTSTRAP_SERVERS", defaults.kafka_bootstrap_servers
            ),
            redis_url=env.get("REDIS_URL", defaults.redis_url),
            k_sink=env.get("K_SINK", ""),
            k_ce_overrides=env.get("K_CE_OVERRIDES", ""),
            eventing_dir=Path(env.get("EXECMESH_EVENTING_DIR", str(defaults.eventing_dir))),
            local_config_path=Path(
                env.get("EXECMESH_LOCAL_CONFIG", str(defaults.local_config_path))
            ),
            data_dir=Path(env.get("EXECMESH_DATA_DIR", str(defaults.data_dir))),
            podexec_path=Path(env.get("EXECMESH_PODEXEC", str(defaults.podexec_path))),
            kubeconfig=env.get("KUBECONFIG", ""),
            saga_grace_seconds=float(env.get("SAGA_GRACE_SECONDS", defaults.saga_grace_seconds)),
            saga_startup_seconds=float(
                env.get("SAGA_STARTUP_SECONDS", defaults.saga_startup_seconds)
            ),
            saga_batch_size=int(env.get("SAGA_BATCH_SIZE", defaults.saga_batch_size)),
            saga_retention_seconds=float(
                env.get("SAGA_RETENTION_SECONDS", defaults.saga_retention_seconds)
            ),
            pod_backend=env.get("EXECMESH_POD_BACKEND", defaults.pod_backend),
            pod_namespace=env.get("EXECMESH_POD_NAMESPACE", defaults.pod_namespace),
            max_per_user=int(env.get("EXECMESH_MAX_PER_USER", defaults.max_per_user)),
            max_global=int(env.get("EXECMESH_MAX_GLOBAL", defaults.max_global)),
            cpu_budget_millis=int(
                env.get("EXECMESH_CPU_BUDGET_MILLIS", defaults.cpu_budget_millis)
            ),
            memory_budget_mb=int(env.get("EXECMESH_MEMORY_BUDGET_MB", defaults.memory_budget_mb)),
            max_timeout_seconds=float(
                env.get("EXECMESH_MAX_TIMEOUT_SECONDS", defaults.max_timeout_seconds)
            ),
            max_memory_mb=int(env.get("EXECMESH_MAX_MEMORY_MB", defaults.max_memory_mb)),
            max_cpu_millis=int(env.get("EXECMESH_MAX_CPU_MILLIS", defaults.max_cpu_millis)),
            max_output_bytes=int(env.get("EXECMESH_MAX_OUTPUT_BYTES", defaults.max_output_bytes)),
            max_script_bytes=int(env.get("EXECMESH_MAX_SCRIPT_BYTES", defaults.max_script_bytes)),
            default_timeout_seconds=float(
                env.get("EXECMESH_DEFAULT_TIMEOUT_SECONDS", defaults.default_timeout_seconds)
            ),
            default_memory_mb=int(
                env.get("EXECMESH_DEFAULT_MEMORY_MB", defaults.default_memory_mb)
            ),
            default_cpu_millis=int(
                env.get("EXECMESH_DEFAULT_CPU_MILLIS", defaults.default_cpu_millis)
            ),
            default_output_bytes=int(
                env.get("EXECMESH_DEFAULT_OUTPUT_BYTES", defaults.default_output_bytes)
            ),
            lease_seconds=float(env.get("EXECMESH_LEASE_SECONDS", defaults.lease_seconds)),
            dlq_delay_scale=float(env.get("EXECMESH_DLQ_DELAY_SCALE", defaults.dlq_delay_scale)),
            api_rate_per_second=int(
                env.get("EXECMESH_API_RATE_PER_SECOND", defaults.api_rate_per_second)
            ),
            api_max_active_per_user=int(
                env.get("EXECMESH_API_MAX_ACTIVE_PER_USER", defaults.api_max_active_per_user)
            ),
            api_max_streams_per_user=positive(
                "EXECMESH_API_MAX_STREAMS_PER_USER",
                env.get("EXECMESH_API_MAX_STREAMS_PER_USER"),
                defaults.api_max_streams_per_user,
            ),
            api_max_body_bytes=int(
                env.get("EXECMESH_API_MAX_BODY_BYTES", defaults.api_max_body_bytes)
            ),
            api_callback_secret=env.get("EXECMESH_API_CALLBACK_SECRET", ""),
            api_callback_allowed_networks=networks(
                "EXECMESH_API_CALLBACK_ALLOWED_NETWORKS",
                env.get("EXECMESH_API_CALLBACK_ALLOWED_NETWORKS", ""),
            ),
            api_serves=one_of("EXECMESH_API_SERVES", env.get("EXECMESH_API_SERVES"), API_ROLES),
            handler_threads=positive("THREADS", env.get("THREADS"), defaults.handler_threads),
        )

    def local_config(self) -> LocalConfig:
        return LocalConfig.load(self.local_config_path)


def one_of(name: str, value: str | None, choices: tuple[str, ...]) -> str:
    """``value``, which must be one of ``choices``; the first when unset."""
    if value is None or value == "":
        return choices[0]
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def positive(name: str, value: str | None, default: int) -> int:
    """``value`` as a whole number above zero; ``default`` when unset."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{name} must be a whole number above zero, not {value!r}")
    return number


def networks(name: str, value: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated CIDRs, as ``10.0.0.0/8,fd00::/8``; empty for none."""
    try:
        return tuple(ip_network(part.strip()) for part in value.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


@dataclass(frozen=True)
class LocalConfig:
    """``config/local.yaml``: where each process of the local mesh listens."""

    namespace: str
    broker_name: str
    broker_port: int
    node_port: int
    service_ports: Mapping[str, int]
    host: str = "127.0.0.1"

    @classmethod
    def load(cls, path: Path) -> LocalConfig:
        raw: dict[str, Any] = yaml.safe_load(path.read_text())
        return cls(
            namespace=str(raw["namespace"]),
            broker_name=str(raw["broker"]["name"]),
            broker_port=int(raw["broker"]["port"]),
            node_port=int(raw["node"]["port"]),
            service_ports={
                name: int(spec["port"]) for name, spec in raw.get("services", {}).items()
            },
        )

    @property
    def broker_url(self) -> str:
        return f"http://{self.host}:{self.broker_port}/{self.namespace}/{self.broker_name}"

    @property
    def node_url(self) -> str:
        return f"http://{self.host}:{self.node_port}"

    def service_url(self, name: str) -> str:
        return f"http://{self.host}:{self.service_ports[name]}"
