"""`execmesh triggers`: the local wiring, listed the way `kn trigger list` does.

    NAME   BROKER   SINK   AGE   CONDITIONS   READY   REASON

READY is True when every condition holds: the trigger's broker answers, its subscriber (and
dead-letter sink) resolve to a local URL, and the subscriber answers HTTP (`GET
/health/readiness`), i.e. the local broker can reach it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from execmesh.broker.manifests import Eventing, Trigger, load_eventing
from execmesh.broker.resolve import DestinationError, resolve
from execmesh.errors import ConfigError
from execmesh.settings import LocalConfig, Settings

COLUMNS = ("NAME", "BROKER", "SINK", "AGE", "CONDITIONS", "READY", "REASON")

# url -> None when it answers, else the reason it does not
Probe = Callable[[str], str | None]


@dataclass(frozen=True)
class Condition:
    type: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Row:
    name: str
    broker: str
    sink: str
    age: str
    conditions: tuple[Condition, ...]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.conditions)

    @property
    def reason(self) -> str:
        return next((f"{c.type}: {c.reason}" for c in self.conditions if not c.ok), "")

    def cells(self) -> tuple[str, ...]:
        ok = sum(c.ok for c in self.conditions)
        return (
            self.name,
            self.broker,
            self.sink,
            self.age,
            f"{ok} OK / {len(self.conditions)}",
            str(self.ready),
            self.reason,
        )


def http_probe(url: str) -> str | None:
    try:
        status = httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError as error:
        return f"{type(error).__name__} at {url}"
    return f"HTTP {status} at {url}" if status >= 500 else None


def readiness_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/health/readiness"


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def row(trigger: Trigger, eventing: Eventing, local: LocalConfig, probe: Probe, now: float) -> Row:
    broker = eventing.broker_of(trigger)
    broker_url = f"http://{local.host}:{local.broker_port}/healthz"
    conditions = [Condition("BrokerReady", probe(broker_url) or "")]
    subscriber = _resolved(trigger, "SubscriberResolved", local, conditions)
    sink = eventing.delivery_of(trigger).dead_letter_sink
    if sink is not None:
        try:
            resolve(sink, local)
            conditions.append(Condition("DeadLetterSinkResolved"))
        except DestinationError as error:
            conditions.append(Condition("DeadLetterSinkResolved", str(error)))
    if subscriber is None:
        conditions.append(Condition("SubscriberReady", "not resolved"))
    else:
        conditions.append(Condition("SubscriberReady", probe(readiness_url(subscriber)) or ""))
    return Row(
        trigger.name,
        broker.name,
        trigger.subscriber.describe(),
        age(now - trigger.created),
        tuple(conditions),
    )


def _resolved(
    trigger: Trigger, kind: str, local: LocalConfig, conditions: list[Condition]
) -> str | None:
    try:
        url = resolve(trigger.subscriber, local)
    except DestinationError as error:
        conditions.append(Condition(kind, str(error)))
        return None
    conditions.append(Condition(kind))
    return url


def rows(eventing: Eventing, local: LocalConfig, probe: Probe = http_probe) -> list[Row]:
    now = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda t: row(t, eventing, local, probe, now), eventing.triggers))


def table(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="execmesh triggers", description=__doc__.split("\n")[0])
    parser.add_argument("--eventing-dir", type=Path, default=settings.eventing_dir)
    parser.add_argument("--local-config", type=Path, default=settings.local_config_path)
    parser.add_argument("-n", "--namespace", help="only this namespace")
    args = parser.parse_args(argv)
    try:
        local = LocalConfig.load(args.local_config)
        eventing = load_eventing(args.eventing_dir, local.namespace)
    except ConfigError as error:
        print(f"execmesh triggers: {error}", file=sys.stderr)
        return 2
    found = [
        r.cells()
        for r, t in zip(rows(eventing, local), eventing.triggers, strict=True)
        if args.namespace in (None, t.namespace)
    ]
    if not found:
        print("No triggers found.")
        return 0
    print(table([COLUMNS, *found]))
    return 0
