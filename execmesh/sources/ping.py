"""``execmesh ping``: the local PingSource adapter.

Reads the PingSource objects of ``eventing/`` and sends their ping event to their sink on
every tick. Only minute-granular schedules of the forms ``* * * * *`` and ``*/N * * * *``
are understood; ``--interval`` replaces the schedule so local runs need not wait a minute.
Each tick's event id is derived from the source and the tick's time, so a tick delivered
twice is recognisably the same tick.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from execmesh.errors import ConfigError
from execmesh.events import PingTick
from execmesh.settings import LocalConfig, Settings

log = logging.getLogger(__name__)

PING_TYPE = PingTick.TYPE


@dataclass(frozen=True)
class PingSource:
    name: str
    namespace: str
    period_seconds: float
    content_type: str
    data: str
    sink_url: str

    @property
    def source(self) -> str:
        return f"/apis/v1/namespaces/{self.namespace}/pingsources/{self.name}"


def schedule_period_seconds(schedule: str) -> float:
    fields = schedule.split()
    if len(fields) != 5 or any(f != "*" for f in fields[1:]):
        raise ConfigError(f"unsupported PingSource schedule {schedule!r} (minute-granular only)")
    minute = fields[0]
    if minute == "*":
        return 60.0
    if minute.startswith("*/") and minute[2:].isdigit() and int(minute[2:]) > 0:
        return 60.0 * int(minute[2:])
    raise ConfigError(f"unsupported PingSource schedule {schedule!r}")


def resolve_sink(sink: dict[str, Any], local: LocalConfig) -> str:
    if "uri" in sink:
        return str(sink["uri"])
    ref = sink.get("ref") or {}
    if ref.get("kind") == "Broker":
        return f"http://{local.host}:{local.broker_port}/{local.namespace}/{ref['name']}"
    if ref.get("kind") == "Service" and ref.get("name") in local.service_ports:
        return local.service_url(str(ref["name"]))
    raise ConfigError(f"cannot resolve sink {sink!r} on this machine")


def load_ping_sources(eventing_dir: Path, local: LocalConfig) -> list[PingSource]:
    sources = []
    for path in sorted(eventing_dir.rglob("*.yaml")):
        for doc in _documents(path):
            if doc.get("kind") != "PingSource":
                continue
            spec, meta = doc.get("spec", {}), doc.get("metadata", {})
            sources.append(
                PingSource(
                    name=str(meta["name"]),
                    namespace=str(meta.get("namespace", local.namespace)),
                    period_seconds=schedule_period_seconds(str(spec.get("schedule", ""))),
                    content_type=str(spec.get("contentType", "application/json")),
                    data=str(spec.get("data", "")),
                    sink_url=resolve_sink(spec.get("sink", {}), local),
                )
            )
    return sources


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    try:
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {error}") from error


def tick_headers(source: PingSource, tick: datetime) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source.source}#{tick.isoformat()}")),
        "ce-type": PING_TYPE,
        "ce-source": source.source,
        "ce-time": tick.isoformat().replace("+00:00", "Z"),
        "content-type": source.content_type,
    }


def run(sources: Sequence[PingSource], interval: float | None, stop: threading.Event) -> None:
    with httpx.Client(timeout=5.0) as client:
        next_due = {s.name: time.monotonic() for s in sources}
        while not stop.is_set():
            now = time.monotonic()
            for source in sources:
                if now < next_due[source.name]:
                    continue
                next_due[source.name] = now + (interval or source.period_seconds)
                _send(client, source)
            stop.wait(max(0.05, min(next_due.values()) - time.monotonic()))


def _send(client: httpx.Client, source: PingSource) -> None:
    tick = datetime.now(UTC).replace(microsecond=0)
    try:
        response = client.post(
            source.sink_url, headers=tick_headers(source, tick), content=source.data.encode()
        )
        if response.status_code >= 300:
            log.warning("ping %s: sink answered %s", source.name, response.status_code)
    except httpx.HTTPError as error:
        log.warning("ping %s: sink unreachable: %s", source.name, error)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh ping", description=__doc__)
    parser.add_argument("--interval", type=float, help="seconds between ticks (local override)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ping %(levelname)s %(message)s")
    settings = Settings.from_env()
    sources = load_ping_sources(settings.eventing_dir, settings.local_config())
    if not sources:
        log.error("no PingSource in %s", settings.eventing_dir)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("ticking %s", ", ".join(f"{s.name} -> {s.sink_url}" for s in sources))
    run(sources, args.interval, stop)
    return 0
