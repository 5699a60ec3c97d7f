"""The whole pipeline on this machine, one process each, for end-to-end tests.

Unlike ``execmesh up`` (honcho, which stops everything when one process dies), each process
is started on its own here, so a test can kill -9 one and start it again. Ports, database
and Redis database are the mesh's own, apart from anything a developer runs beside it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from pymongo.database import Database

from execmesh.events import ExecutionCancelRequested, ExecutionRequested, ExecutionSpec, Limits
from execmesh.local.processes import Process, mesh_processes
from execmesh.mesh.sender import Emitter, HttpSender
from execmesh.mongo import connect
from execmesh.settings import PROJECT_ROOT, LocalConfig, Settings

DEFAULT_PORT_OFFSET = 10000
TERMINAL = {"completed", "failed", "timed_out", "cancelled", "rejected"}


@dataclass
class Mesh:
    root: Path
    env: dict[str, str]
    settings: Settings
    local: LocalConfig
    processes: dict[str, Process]
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def database(self) -> Database[dict[str, Any]]:
        return connect(self.settings)

    def start(self, name: str) -> None:
        process = self.processes[name]
        log = (self.root / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            process.argv,
            env={**self.env, **process.env},
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.running.pop(name)
        with contextlib.suppress(ProcessLookupError):  # it has exited, its group with it
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.kill(name, signal.SIGTERM)

    def wait_ready(self, timeout: float = 90.0) -> None:
        probes = {"broker": f"http://{self.local.host}:{self.local.broker_port}/healthz"}
        probes["node"] = f"{self.local.node_url}/api"
        for name in self.running:
            if name in self.local.service_ports:
                probes[name] = f"{self.local.service_url(name)}/health/readiness"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            for name, url in probes.items():
                while not _answers(client, url):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} not ready: see {self.root / name}.log")
                    if self.running[name].poll() is not None:
                        raise RuntimeError(f"{name} exited: see {self.root / name}.log")
                    time.sleep(0.2)

    def submit(
        self,
        language: str,
        version: str,
        script: str,
        *,
        user: str = "alice",
        stdin: str | None = None,
        limits: Limits | None = None,
        priority: str = "normal",
    ) -> str:
        execution_id = uuid.uuid4().hex[:16]
        request = ExecutionRequested(
            execution_id=execution_id,
            user_id=user,
            spec=ExecutionSpec(language=language, version=version, script=script, stdin=stdin),
            limits=limits,
            priority=priority,  # type: ignore[arg-type]
            submitted_at=datetime.now(UTC),
        )
        self.emit(request)
        return execution_id

    def cancel(self, execution_id: str) -> None:
        self.emit(ExecutionCancelRequested(execution_id=execution_id, requested_by="alice"))

    def emit(self, payload: Any) -> None:
        with HttpSender(self.local.broker_url) as sender:
            Emitter("e2e", sender).emit(payload)

    def execution(self, execution_id: str) -> dict[str, Any] | None:
        return self.database["executions"].find_one({"_id": execution_id})

    def wait_for(
        self, execution_id: str, statuses: set[str] = TERMINAL, timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = self.execution(execution_id)
            if document is not None and document.get("status") in statuses:
                return document
            time.sleep(0.1)
        raise AssertionError(
            f"{execution_id} not {statuses} in {timeout}s: {self.execution(execution_id)}"
        )

    def pods(self) -> list[dict[str, Any]]:
        url = f"{self.local.node_url}/api/v1/namespaces/{self.settings.pod_namespace}/pods"
        return list(httpx.get(url, timeout=5).json()["items"])


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code < 500
    except httpx.HTTPError:
        return False


def shifted_config(path: Path, offset: int, namespace: str) -> None:
    raw: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "config" / "local.yaml").read_text())
    raw["namespace"] = namespace
    raw["broker"]["port"] += offset
    raw["node"]["port"] += offset
    for spec in raw["services"].values():
        spec["port"] += offset
    path.write_text(yaml.safe_dump(raw))


def renamespaced_eventing(directory: Path, namespace: str) -> None:
    """The project's manifests in a namespace of the mesh's own: its own Kafka topic and
    consumer groups, so two meshes on one Kafka never take each other's events."""
    source = PROJECT_ROOT / "eventing"
    for path in source.rglob("*.yaml"):
        target = directory / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            path.read_text().replace("namespace: execmesh", f"namespace: {namespace}")
        )


def start_mesh(
    root: Path,
    *,
    port_offset: int = DEFAULT_PORT_OFFSET,
    redis_db: int = 9,
    extra_manifests: Mapping[str, str] | None = None,
    **extra_env: str,
) -> Iterator[Mesh]:
    """Start every process; ``port_offset`` and ``redis_db`` tell concurrent meshes apart.

    ``extra_manifests`` (path under ``eventing/`` -> YAML in namespace ``execmesh``) add, for
    example, a Trigger to a sink of the caller's own before the broker reads them.
    """
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    config = root / "local.yaml"
    shifted_config(config, port_offset, namespace)
    renamespaced_eventing(root / "eventing", namespace)
    for name, text in (extra_manifests or {}).items():
        (root / "eventing" / name).write_text(
            text.replace("namespace: execmesh", f"namespace: {namespace}")
        )
    base = Settings.from_env()
    redis_url = base.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "EXECMESH_LOCAL_CONFIG": str(config),
        "EXECMESH_EVENTING_DIR": str(root / "eventing"),
        "EXECMESH_DATA_DIR": str(root / "data"),
        "EXECMESH_POD_NAMESPACE": namespace,
        "MONGODB_DATABASE": f"e2e_{uuid.uuid4().hex[:10]}",
        "REDIS_URL": redis_url,
        **extra_env,
    }
    settings = Settings.from_env(env)
    local = settings.local_config()
    processes = {p.name: p for p in mesh_processes(local, ping_interval=1.0)}
    mesh = Mesh(root, env, settings, local, processes)
    try:
        for name in processes:
            mesh.start(name)
        mesh.wait_ready()
        yield mesh
    finally:
        mesh.stop_all()
        connect(settings).client.drop_database(settings.mongodb_database)
        _delete_topic_and_groups(settings, namespace)


def _delete_topic_and_groups(settings: Settings, namespace: str) -> None:
    from kafka.admin import KafkaAdminClient  # the only Kafka use here

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        # kafka-python 3 lists groups as dicts (``list_groups``/``delete_groups``).
        listed = [g["group_id"] for g in admin.list_groups()]
        groups = [g for g in listed if f"-{namespace}-" in g]
        if groups:
            admin.delete_groups(groups)
        admin.delete_topics([f"knative-broker-{namespace}-default"])
    except Exception as error:  # cleanup must not hide the test's own outcome
        print(f"cleanup of {namespace} in Kafka failed: {error}")
    finally:
        admin.close()
