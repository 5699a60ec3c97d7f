"""Kafka, FerretDB and Redis as plain local processes: no Docker, data under ``.local/``.

`make services-up` runs ``python -m execmesh.localservices up``. A service whose URL in the
settings is not the local default (``KAFKA_BOOTSTRAP_SERVERS``, ``MONGODB_URL``,
``REDIS_URL`` set to another server) is external: it is only checked, never started.
Each local server is started in its own session so that it outlives this command, and its pid
is kept in ``.local/run/<name>.pid`` for ``down``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from execmesh.errors import ConfigError, TransientError
from execmesh.settings import PROJECT_ROOT, Settings

logger = logging.getLogger(__name__)

SERVICE_NAMES = ("redis", "ferretdb", "kafka")
_DEFAULTS = Settings()
_POLL_SECONDS = 0.25
_STOP_SECONDS = 30.0


@dataclass(frozen=True)
class Layout:
    """Where the local servers keep their binaries, data, logs and pids, and their ports."""

    data_dir: Path
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    mongodb_port: int = 27017
    redis_port: int = 6379
    templates_dir: Path = PROJECT_ROOT / "scripts" / "services"

    @property
    def bin_dir(self) -> Path:
        return self.data_dir / "bin"

    @property
    def kafka_libs(self) -> Path:
        return self.data_dir / "kafka" / "libs"

    @property
    def kafka_config(self) -> Path:
        return self.data_dir / "kafka" / "server.properties"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def data(self, name: str) -> Path:
        return self.data_dir / "data" / name

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    local: bool
    argv: tuple[str, ...]
    # A word of the running process's command line, so that a stale pid file whose pid was
    # reused by another program is never signalled.
    process_marker: str
    start_timeout: float
    check: Callable[[str], None]


def kafka_properties(layout: Layout) -> str:
    """A single combined broker+controller in KRaft mode, sized for one developer machine."""
    broker = f"127.0.0.1:{layout.kafka_port}"
    controller = f"127.0.0.1:{layout.kafka_controller_port}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(layout.data("kafka")),
        "num.partitions": "1",
        # One node: every internal topic has a single replica. Fewer offsets partitions make
        # the first consumer group of a fresh install ready in about a second, not ten.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests create many short-lived groups; the default 3 s wait would slow each one.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.hours": "24",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def new_kafka_cluster_id() -> str:
    """A cluster id as Kafka's ``random-uuid`` makes one: base64url of 16 random bytes."""
    while True:
        encoded = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not encoded.startswith("-"):
            return encoded


def java_command(
    layout: Layout, main_class: str, *args: str, max_heap: str = "1g"
) -> tuple[str, ...]:
    return (
        "java",
        "-Xms256m",
        f"-Xmx{max_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={layout.templates_dir / 'kafka-log4j2.properties'}",
        f"-Dkafka.logs.dir={layout.logs_dir}",
        "-cp",
        f"{layout.kafka_libs}/*",
        main_class,
        *args,
    )


def redis_command(layout: Layout) -> tuple[str, ...]:
    # Local data is disposable: no snapshots or AOF, so that a restart starts clean and fast.
    return (
        "redis-server",
        "--bind", "127.0.0.1",
        "--port", str(layout.redis_port),
        "--dir", str(layout.data("redis")),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        "--daemonize", "no",
    )  # fmt: skip


def ferretdb_command(layout: Layout) -> tuple[str, ...]:
    return (
        str(layout.bin_dir / "ferretdb"),
        "--handler=sqlite",
        # WAL without an fsync per commit: a FerretDB crash loses nothing, a machine crash
        # the last moments' writes, as with MongoDB's default (journal synced every 100 ms).
        f"--sqlite-url=file:{layout.data('ferretdb')}/?_pragma=synchronous(normal)",
        f"--state-dir={layout.data('ferretdb')}",
        f"--listen-addr=127.0.0.1:{layout.mongodb_port}",
        "--debug-addr=-",
        "--telemetry=disable",
        "--log-level=warn",
    )


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        if not client.ping():
            raise TransientError(f"redis at {url} did not answer PING")
    finally:
        client.close()


def check_mongodb(url: str) -> None:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=1500, connectTimeoutMS=1000
    )
    try:
        client.admin.command("ping")
    finally:
        client.close()


def check_kafka(bootstrap_servers: str) -> None:
    from kafka import KafkaAdminClient

    # The admin client spends seconds retrying a refused bootstrap; a plain connect fails fast.
    first = urlsplit(f"//{bootstrap_servers.split(',')[0]}")
    socket.create_connection((first.hostname or "127.0.0.1", first.port or 9092), 1.0).close()

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers.split(","),
        request_timeout_ms=3000,
        bootstrap_timeout_ms=3000,
    )
    try:
        cluster = admin.describe_cluster()
        if not [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]:
            raise TransientError(f"kafka at {bootstrap_servers} lists no ready broker yet")
    finally:
        admin.close()


def services(settings: Settings, layout: Layout) -> list[Service]:
    """The three services; a URL other than the local default means an external server."""
    return [
        Service(
            name="redis",
            url=settings.redis_url,
            local=settings.redis_url == _DEFAULTS.redis_url,
            argv=redis_command(layout),
            process_marker="redis-server",
            start_timeout=20.0,
            check=check_redis,
        ),
        Service(
            name="ferretdb",
            url=settings.mongodb_url,
            local=settings.mongodb_url == _DEFAULTS.mongodb_url,
            argv=ferretdb_command(layout),
            process_marker="ferretdb",
            start_timeout=30.0,
            check=check_mongodb,
        ),
        Service(
            name="kafka",
            url=settings.kafka_bootstrap_servers,
            local=settings.kafka_bootstrap_servers == _DEFAULTS.kafka_bootstrap_servers,
            argv=java_command(layout, "kafka.Kafka", str(layout.kafka_config)),
            process_marker="kafka.Kafka",
            start_timeout=90.0,
            check=check_kafka,
        ),
    ]


def with_ports(layout: Layout, settings: Settings) -> Layout:
    """The layout whose ports are those of the settings' local URLs."""
    return Layout(
        data_dir=layout.data_dir,
        kafka_port=_port(settings.kafka_bootstrap_servers.split(",")[0], layout.kafka_port),
        kafka_controller_port=layout.kafka_controller_port,
        mongodb_port=_port(settings.mongodb_url, layout.mongodb_port),
        redis_port=_port(settings.redis_url, layout.redis_port),
        templates_dir=layout.templates_dir,
    )


def _port(address: str, default: int) -> int:
    netloc = urlsplit(address if "//" in address else f"//{address}")
    return netloc.port or default


def missing_installs(service: Service, layout: Layout) -> str | None:
    """Why this local service cannot start yet, or None when it is installed."""
    if service.name == "redis" and not _on_path("redis-server"):
        return "redis-server is not installed (run `make setup`)"
    if service.name == "ferretdb" and not (layout.bin_dir / "ferretdb").exists():
        return f"{layout.bin_dir / 'ferretdb'} is missing (run `make setup`)"
    if service.name == "kafka":
        if not _on_path("java"):
            return "java is not installed (run `make setup`)"
        if not any(layout.kafka_libs.glob("kafka_2.13-*.jar")):
            return f"no Kafka jars in {layout.kafka_libs} (run `make setup`)"
    return None


def _on_path(program: str) -> bool:
    return any(
        os.access(Path(folder) / program, os.X_OK)
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder
    )


def prepare(layout: Layout, to_start: Sequence[Service]) -> None:
    """Create the data folders, write Kafka's config, and format its storage once."""
    for folder in (layout.logs_dir, layout.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for service in to_start:
        layout.data(service.name).mkdir(parents=True, exist_ok=True)
    if any(service.name == "kafka" for service in to_start):
        _prepare_kafka(layout)


def _prepare_kafka(layout: Layout) -> None:
    layout.kafka_config.parent.mkdir(parents=True, exist_ok=True)
    layout.kafka_config.write_text(kafka_properties(layout))
    if (layout.data("kafka") / "meta.properties").exists():
        return
    argv = java_command(
        layout,
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        "--ignore-formatted",
        "--cluster-id",
        new_kafka_cluster_id(),
        "--config",
        str(layout.kafka_config),
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise ConfigError(
            f"kafka: formatting storage in {layout.data('kafka')} failed "
            f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )


def running_pid(service: Service, layout: Layout) -> int | None:
    """The pid of this service's process started by us, if it is still alive."""
    try:
        pid = int(layout.pid_file(service.name).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if service.process_marker.encode() not in cmdline:
        return None
    return pid


def healthy(service: Service) -> str | None:
    """None when the service answers its health check, else why it does not."""
    try:
        service.check(service.url)
    except Exception as error:  # every client library has its own errors; all mean "not yet"
        return f"{type(error).__name__}: {error}".strip()
    return None


def start(service: Service, layout: Layout) -> subprocess.Popen[bytes] | None:
    """Start the service's process; None when the one we started before is still running."""
    if running_pid(service, layout) is not None:
        logger.info("%s: already started, pid file %s", service.name, layout.pid_file(service.name))
        return None
    log = layout.log_file(service.name).open("ab")
    try:
        process = subprocess.Popen(
            service.argv,
            cwd=layout.data(service.name),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make services-up`
        )
    finally:
        log.close()
    layout.pid_file(service.name).write_text(f"{process.pid}\n")
    return process


def wait_until_healthy(
    service: Service, layout: Layout, process: subprocess.Popen[bytes] | None
) -> None:
    timeout = service.start_timeout if service.local else min(service.start_timeout, 10.0)
    deadline = time.monotonic() + timeout
    reason = healthy(service)
    while reason is not None:
        if process is not None and process.poll() is not None:
            raise TransientError(
                f"{service.name}: exited with code {process.returncode} while starting; "
                f"last lines of {layout.log_file(service.name)}:\n"
                f"{tail(layout.log_file(service.name))}"
            )
        if time.monotonic() > deadline:
            message = (
                f"{service.name}: no healthy answer at {service.url} after {timeout:.0f} s"
                f" ({reason})"
            )
            if service.local:
                log = layout.log_file(service.name)
                message += f"; last lines of {log}:\n{tail(log)}"
            raise TransientError(message)
        time.sleep(_POLL_SECONDS)
        reason = healthy(service)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(service: Service, layout: Layout, timeout: float = _STOP_SECONDS) -> bool:
    """Stop the process we started; False when there was none."""
    pid = running_pid(service, layout)
    layout_pid_file = layout.pid_file(service.name)
    if pid is None:
        layout_pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        logger.warning("%s: still running %.0f s after SIGTERM, killing", service.name, timeout)
        os.kill(pid, signal.SIGKILL)
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    layout_pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    # A stopped child of ours stays a zombie until reaped; a zombie is not alive.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def up(all_services: Sequence[Service], layout: Layout) -> list[str]:
    """Start every local service and wait for all; the failures, one message each."""
    # A server already answering is used as it is, whoever started it.
    to_start = [s for s in all_services if s.local and healthy(s) is not None]
    failures = [
        f"{service.name}: {why}"
        for service in to_start
        if (why := missing_installs(service, layout)) is not None
    ]
    if failures:
        return failures
    prepare(layout, to_start)
    # Start them all before waiting on any, so the slow JVM start overlaps the others.
    processes = {service.name: start(service, layout) for service in to_start}
    for service in all_services:
        try:
            wait_until_healthy(service, layout, processes.get(service.name))
        except TransientError as error:
            failures.append(str(error) if service.local else f"{error} (external server)")
            continue
        where = "local" if service.local else "external"
        print(f"{service.name:<9} ready   {service.url} ({where})")
    return failures


def down(all_services: Sequence[Service], layout: Layout) -> None:
    # Kafka first, while the others are still up.
    for service in reversed(all_services):
        if not service.local:
            continue
        stopped = stop(service, layout)
        print(f"{service.name:<9} {'stopped' if stopped else 'not running (not started by us)'}")


def status(all_services: Sequence[Service]) -> bool:
    ok = True
    for service in all_services:
        reason = healthy(service)
        ok = ok and reason is None
        where = "local" if service.local else "external"
        state = "ready" if reason is None else f"DOWN    {reason}"
        print(f"{service.name:<9} {state:<7} {service.url} ({where})")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="execmesh services", description="start, stop and check the local services"
    )
    parser.add_argument("action", choices=("local", "prepare", "up", "down", "status"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The clients log every refused connection while a server is still starting.
    for noisy in ("kafka", "pymongo", "redis"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    settings = Settings.from_env()
    layout = with_ports(Layout(data_dir=settings.data_dir), settings)
    all_services = services(settings, layout)
    local = [service for service in all_services if service.local]
    if args.action == "local":
        print(" ".join(service.name for service in local))
    elif args.action == "prepare":
        prepare(layout, local)
    elif args.action == "down":
        down(all_services, layout)
    elif args.action == "status":
        return 0 if status(all_services) else 1
    else:
        failures = up(all_services, layout)
        for failure in failures:
            print(f"services-up: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
