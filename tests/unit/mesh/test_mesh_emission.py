from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from execmesh.errors import ConfigError
from execmesh.events import DlqParked, ExecutionCancelled, ExecutionCancelRequested
from execmesh.mesh.emission import (
    Emission,
    apply_overrides,
    build_event,
    derive_event_id,
    event_from_emission,
    parse_ce_overrides,
    to_binary_http,
)
from execmesh.mesh.envelope import IncomingEvent, decode_event

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CANCELLED = ExecutionCancelled(execution_id="ex-1", reason="user")
PARKED = DlqParked(
    dead_letter_id="dl-1",
    original_id="evt-9",
    original_type="io.execmesh.pod.created",
    destination="http://saga",
    attempts=3,
    last_error="boom",
)


def incoming(**extensions: str) -> IncomingEvent:
    return IncomingEvent(
        id="evt-1",
        type=ExecutionCancelRequested.TYPE,
        source="/execmesh/api",
        subject="ex-1",
        payload=ExecutionCancelRequested(execution_id="ex-1"),
        extensions=extensions,
    )


def test_derived_ids_are_the_same_for_the_same_inputs() -> None:
    assert derive_event_id("a", "t", subject="s", discriminator="d") == derive_event_id(
        "a", "t", subject="s", discriminator="d"
    )


@pytest.mark.parametrize(
    ("cause", "ce_type", "subject", "discriminator"),
    [
        ("b", "t", "s", ""),
        ("a", "u", "s", ""),
        ("a", "t", "other", ""),
        ("a", "t", None, ""),
        ("a", "t", "s", "x"),
        ("a\nt", "s", None, ""),
    ],
)
def test_derived_ids_differ_when_anything_differs(
    cause: str, ce_type: str, subject: str | None, discriminator: str
) -> None:
    assert derive_event_id("a", "t", subject="s") != derive_event_id(
        cause, ce_type, subject=subject, discriminator=discriminator
    )


def test_one_cause_emitting_one_type_for_many_executions_gives_distinct_ids() -> None:
    cause = incoming()
    events = [
        event_from_emission(
            Emission(ExecutionCancelled(execution_id=f"ex-{n}", reason="tick")),
            cause,
            component="coordinator",
            time=NOW,
        )
        for n in range(3)
    ]

    assert len({event.id for event in events}) == 3


def test_an_emitted_event_carries_the_execution_id_as_subject_and_partition_key() -> None:
    event = event_from_emission(Emission(CANCELLED), incoming(), component="saga", time=NOW)

    assert event.type == "io.execmesh.execution.cancelled"
    assert event.source == "/execmesh/saga"
    assert event.subject == "ex-1"
    assert event.partition_key == "ex-1"
    assert event.data == CANCELLED.to_data()
    assert event.id == derive_event_id("/execmesh/api\nevt-1", CANCELLED.TYPE, subject="ex-1")


def test_an_emission_without_execution_id_takes_the_subject_of_its_cause() -> None:
    event = event_from_emission(Emission(PARKED), incoming(), component="dlq", time=NOW)

    assert (event.subject, event.partition_key) == ("ex-1", "ex-1")


def test_an_explicit_subject_wins_over_the_execution_id() -> None:
    event = event_from_emission(
        Emission(CANCELLED, subject="other"), incoming(), component="saga", time=NOW
    )

    assert (event.subject, event.partition_key) == ("other", "other")


def test_a_replay_session_follows_the_causal_chain_but_replayedfrom_does_not() -> None:
    cause = incoming(replaysession="rs-1", replayedfrom="evt-0")
    event = event_from_emission(Emission(CANCELLED), cause, component="saga", time=NOW)

    assert event.extensions["replaysession"] == "rs-1"
    assert "replayedfrom" not in event.extensions


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("  ", {}),
        ("{}", {}),
        (
            '{"extensions": {"sink": "bound", "count": 3, "on": true}}',
            {
                "sink": "bound",
                "count": "3",
                "on": "true",
            },
        ),
    ],
)
def test_ce_overrides_are_read_from_their_extensions(raw: str, expected: dict[str, str]) -> None:
    assert parse_ce_overrides(raw) == expected


@pytest.mark.parametrize(
    "raw", ["{not json", "[1]", '{"extensions": [1]}', '{"extensions": {"Bad-Name": "x"}}']
)
def test_unusable_ce_overrides_are_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError):
        parse_ce_overrides(raw)


def test_overrides_replace_and_add_extensions() -> None:
    event = build_event(CANCELLED, id="1", component="saga", time=NOW)

    overridden = apply_overrides(event, {"partitionkey": "forced", "team": "a"})

    assert overridden.extensions == {"partitionkey": "forced", "team": "a"}


def test_an_invalid_extension_name_is_refused_when_building() -> None:
    with pytest.raises(ConfigError):
        build_event(CANCELLED, id="1", component="saga", time=NOW, extensions={"UPPER": "x"})


def test_the_binary_encoding_has_every_attribute_as_a_header_and_json_data() -> None:
    event = build_event(CANCELLED, id="id-1", component="saga", time=NOW, extensions={"x": "y"})

    headers, body = to_binary_http(event)

    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == "id-1"
    assert headers["ce-type"] == CANCELLED.TYPE
    assert headers["ce-source"] == "/execmesh/saga"
    assert headers["ce-subject"] == "ex-1"
    assert headers["ce-partitionkey"] == "ex-1"
    assert headers["ce-x"] == "y"
    assert headers["content-type"] == "application/json"
    assert datetime.fromisoformat(headers["ce-time"]) == NOW
    assert json.loads(body) == CANCELLED.to_data()


def test_an_encoded_event_decodes_back_to_the_same_event() -> None:
    event = build_event(CANCELLED, id="id-1", component="saga", time=NOW)

    decoded = decode_event(*to_binary_http(event))

    assert (decoded.id, decoded.type, decoded.source, decoded.subject, decoded.time) == (
        event.id,
        event.type,
        event.source,
        event.subject,
        event.time,
    )
    assert decoded.payload == CANCELLED
    assert decoded.extensions == event.extensions


def test_a_built_event_takes_its_id_from_the_id_then_the_cause_then_chance() -> None:
    given = build_event(CANCELLED, id="given", cause="c", component="saga", time=NOW)
    caused = build_event(CANCELLED, cause="c", component="saga", time=NOW)
    random_ids = {build_event(CANCELLED, component="saga", time=NOW).id for _ in range(2)}

    assert given.id == "given"
    assert caused.id == derive_event_id("c", CANCELLED.TYPE, subject="ex-1")
    assert len(random_ids) == 2
