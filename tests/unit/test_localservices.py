from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from execmesh import localservices
from execmesh.errors import TransientError
from execmesh.localservices import Layout, Service
from execmesh.settings import Settings


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def by_name(services: list[Service]) -> dict[str, Service]:
    return {service.name: service for service in services}


def test_kafka_runs_as_one_kraft_node_listening_only_on_loopback(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path, kafka_port=19092, kafka_controller_port=19093)
    config = properties(localservices.kafka_properties(layout))
    assert config["process.roles"] == "broker,controller"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert config["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert config["log.dirs"] == str(tmp_path / "data" / "kafka")
    assert config["offsets.topic.replication.factor"] == "1"


def test_a_kafka_cluster_id_is_22_characters_of_base64url_not_starting_with_a_dash() -> None:
    for _ in range(200):
        cluster_id = localservices.new_kafka_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id)


def test_default_urls_are_local_services() -> None:
    services = localservices.services(Settings(), Layout(data_dir=Path("/x")))
    assert [(s.name, s.local) for s in services] == [
        ("redis", True),
        ("ferretdb", True),
        ("kafka", True),
    ]


def test_a_url_from_the_environment_makes_that_service_external() -> None:
    settings = Settings.from_env(
        {"MONGODB_URL": "mongodb://db.example:27017/", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}
    )
    services = by_name(localservices.services(settings, Layout(data_dir=Path("/x"))))
    assert not services["ferretdb"].local
    assert not services["kafka"].local
    assert services["redis"].local
    assert services["kafka"].url == "k1:9092"


def test_ports_of_the_layout_follow_the_settings_urls() -> None:
    settings = Settings(
        mongodb_url="mongodb://127.0.0.1:27018/",
        kafka_bootstrap_servers="127.0.0.1:9192,127.0.0.1:9193",
        redis_url="redis://127.0.0.1:6380/0",
    )
    layout = localservices.with_ports(Layout(data_dir=Path("/x")), settings)
    assert (layout.mongodb_port, layout.kafka_port, layout.redis_port) == (27018, 9192, 6380)


def test_every_server_is_told_to_listen_on_loopback_only(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path)
    assert "--bind" in localservices.redis_command(layout)
    redis_argv = localservices.redis_command(layout)
    assert redis_argv[redis_argv.index("--bind") + 1] == "127.0.0.1"
    assert "--listen-addr=127.0.0.1:27017" in localservices.ferretdb_command(layout)
    assert "--telemetry=disable" in localservices.ferretdb_command(layout)


def test_an_empty_install_names_what_is_missing(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path)
    services = by_name(localservices.services(Settings(), layout))
    assert "make setup" in (localservices.missing_installs(services["ferretdb"], layout) or "")
    kafka_missing = localservices.missing_installs(services["kafka"], layout) or ""
    assert "make setup" in kafka_missing


def refuse(url: str) -> None:
    raise ConnectionRefusedError(f"nothing at {url}")


def test_up_fails_before_starting_anything_when_an_install_is_missing(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path)
    down = [
        dataclasses.replace(service, check=refuse)
        for service in localservices.services(Settings(), layout)
    ]
    failures = localservices.up(down, layout)
    assert any(failure.startswith("ferretdb:") for failure in failures)
    assert not layout.run_dir.exists()


def test_a_server_already_answering_is_used_without_checking_the_install(
    tmp_path: Path,
) -> None:
    layout = Layout(data_dir=tmp_path)  # nothing installed here
    answering = [
        dataclasses.replace(service, check=lambda url: None)
        for service in localservices.services(Settings(), layout)
    ]
    assert localservices.up(answering, layout) == []
    assert not list(layout.run_dir.glob("*.pid"))


def test_a_stale_pid_file_naming_another_program_is_never_signalled(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path)
    redis = by_name(localservices.services(Settings(), layout))["redis"]
    layout.run_dir.mkdir(parents=True)
    layout.pid_file("redis").write_text(f"{os.getpid()}\n")  # this pytest, not a redis
    assert localservices.running_pid(redis, layout) is None
    assert localservices.stop(redis, layout) is False
    assert not layout.pid_file("redis").exists()


def test_a_failing_health_check_is_reported_with_its_reason() -> None:
    service = dataclasses.replace(
        localservices.services(Settings(), Layout(data_dir=Path("/x")))[0], check=refuse
    )
    reason = localservices.healthy(service) or ""
    assert reason.startswith("ConnectionRefusedError")
    assert "redis://127.0.0.1:6379/0" in reason


def test_an_external_service_that_never_answers_fails_up_with_its_name(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path)
    external = Service(
        name="redis",
        url="redis://elsewhere:6379/0",
        local=False,
        argv=("false",),
        process_marker="redis-server",
        start_timeout=0.3,
        check=refuse,
    )
    failures = localservices.up([external], layout)
    assert len(failures) == 1
    assert failures[0].startswith("redis: no healthy answer at redis://elsewhere:6379/0")
    assert "external" in failures[0]
    assert not layout.pid_file("redis").exists()


@pytest.mark.timeout(30)
def test_a_local_service_that_exits_while_starting_is_reported_with_its_log(
    tmp_path: Path,
) -> None:
    layout = Layout(data_dir=tmp_path)
    crashing = Service(
        name="redis",
        url="redis://127.0.0.1:1/0",
        local=True,
        argv=("sh", "-c", "echo 'bad config line 3' ; exit 3"),
        process_marker="sh",
        start_timeout=20.0,
        check=refuse,
    )
    localservices.prepare(layout, [crashing])
    process = localservices.start(crashing, layout)
    with pytest.raises(TransientError) as failure:
        localservices.wait_until_healthy(crashing, layout, process)
    assert "exited with code 3" in str(failure.value)
    assert "bad config line 3" in str(failure.value)
