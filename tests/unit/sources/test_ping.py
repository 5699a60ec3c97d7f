from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from execmesh.errors import ConfigError
from execmesh.settings import PROJECT_ROOT, LocalConfig
from execmesh.sources.ping import (
    PING_TYPE,
    PingSource,
    load_ping_sources,
    run,
    schedule_period_seconds,
    tick_headers,
)
from tests.support.http_sink import serving_posts

LOCAL = LocalConfig.load(PROJECT_ROOT / "config" / "local.yaml")


@pytest.mark.parametrize(("schedule", "seconds"), [("* * * * *", 60.0), ("*/5 * * * *", 300.0)])
def test_minute_schedules_become_periods(schedule: str, seconds: float) -> None:
    assert schedule_period_seconds(schedule) == seconds


@pytest.mark.parametrize("schedule", ["", "0 * * * *", "*/0 * * * *", "* * * *", "*/x * * * *"])
def test_schedules_it_cannot_honour_are_refused(schedule: str) -> None:
    with pytest.raises(ConfigError):
        schedule_period_seconds(schedule)


def test_the_project_ping_source_targets_the_local_broker() -> None:
    [source] = load_ping_sources(PROJECT_ROOT / "eventing", LOCAL)
    assert source.sink_url == LOCAL.broker_url
    assert source.period_seconds == 60.0


def test_a_sink_that_names_an_unknown_service_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "kind: PingSource\nmetadata: {name: p}\n"
        "spec: {schedule: '* * * * *', sink: {ref: {kind: Service, name: nowhere}}}\n"
    )
    with pytest.raises(ConfigError, match="cannot resolve sink"):
        load_ping_sources(tmp_path, LOCAL)


def test_the_same_tick_always_gets_the_same_event_id() -> None:
    source = PingSource("p", "ns", 60, "application/json", "{}", "http://x")
    tick = datetime(2026, 1, 1, tzinfo=UTC)
    assert tick_headers(source, tick)["ce-id"] == tick_headers(source, tick)["ce-id"]
    later = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert tick_headers(source, tick)["ce-id"] != tick_headers(source, later)["ce-id"]


@pytest.fixture
def sink() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    def record(headers: dict[str, str], body: bytes) -> int:
        received.append(headers)
        return 202

    with serving_posts(record) as url:
        yield url, received


def test_ticks_arrive_as_binary_ping_events_at_the_interval(
    sink: tuple[str, list[dict[str, str]]],
) -> None:
    url, received = sink
    source = PingSource("tick", "execmesh", 60, "application/json", '{"tick": true}', url)
    stop = threading.Event()
    runner = threading.Thread(target=run, args=([source], 0.2, stop))
    runner.start()
    threading.Event().wait(2.1)
    stop.set()
    runner.join(timeout=5)
    assert 7 <= len(received) <= 12  # about 11 ticks; a late start or wake-up costs one or two
    assert {r["ce-type"] for r in received} == {PING_TYPE}
    assert received[0]["ce-source"] == "/apis/v1/namespaces/execmesh/pingsources/tick"
