from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from execmesh.errors import InvalidEvent
from execmesh.events import (
    CATALOGUE,
    TERMINAL_EXECUTION_TYPES,
    ExecutionCompleted,
    ExecutionRequested,
    ExecutionSpec,
    PingTick,
    UnknownSchemaVersion,
    parse_payload,
)
from execmesh.schemas import SCHEMAS_DIR, render_schemas, stale_files, write_schemas

REQUESTED = ExecutionRequested(
    execution_id="abc123",
    user_id="alice",
    spec=ExecutionSpec(language="python", version="3.11", script="print(1)"),
    submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def test_every_type_follows_the_naming_rule() -> None:
    for ce_type, model in CATALOGUE.items():
        assert ce_type == model.TYPE
        if ce_type == PingTick.TYPE:
            continue
        assert ce_type.startswith("io.execmesh.")
        assert len(ce_type.split(".")) == 4


def test_a_payload_survives_a_round_trip_through_json_data() -> None:
    assert parse_payload(REQUESTED.TYPE, REQUESTED.to_data()) == REQUESTED


def test_an_unknown_type_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="unknown event type"):
        parse_payload("io.execmesh.nothing.happened", {})


def test_an_unknown_schema_version_is_refused_not_guessed() -> None:
    data = {**REQUESTED.to_data(), "schema_version": 2}
    with pytest.raises(UnknownSchemaVersion):
        parse_payload(REQUESTED.TYPE, data)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        {"execution_id": "abc"},
        {**REQUESTED.to_data(), "execution_id": "Not A DNS Name"},
        {**REQUESTED.to_data(), "unexpected": 1},
    ],
)
def test_malformed_payloads_are_invalid_events(data: object) -> None:
    with pytest.raises(InvalidEvent):
        parse_payload(REQUESTED.TYPE, data)


def test_a_script_over_the_inline_limit_is_refused() -> None:
    data = REQUESTED.to_data()
    data["spec"]["script"] = "x" * (32 * 1024 + 1)
    with pytest.raises(InvalidEvent, match="script"):
        parse_payload(REQUESTED.TYPE, data)


@pytest.mark.parametrize(
    "ce_type",
    [
        "io.execmesh.execution.cancelled",
        "io.execmesh.execution.cancel_requested",
        "io.execmesh.execution.rejected",
    ],
)
def test_a_reason_is_a_sentence_not_a_document(ce_type: str) -> None:
    data = {"execution_id": "abc123", "user_id": "alice", "code": "invalid", "reason": "x"}
    if ce_type != "io.execmesh.execution.rejected":
        data = {"execution_id": "abc123", "reason": "x"}
    parse_payload(ce_type, data)
    with pytest.raises(InvalidEvent, match="reason"):
        parse_payload(ce_type, {**data, "reason": "x" * 4097})


def test_terminal_types_include_a_non_zero_exit_as_completed() -> None:
    completed = ExecutionCompleted(execution_id="abc", exit_code=3)
    assert completed.TYPE in TERMINAL_EXECUTION_TYPES
    assert parse_payload(completed.TYPE, completed.to_data()) == completed


def test_checked_in_schemas_are_not_stale() -> None:
    assert stale_files(SCHEMAS_DIR) == []


def test_a_changed_or_extra_schema_file_counts_as_stale(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    assert stale_files(tmp_path) == []
    name = next(iter(render_schemas()))
    (tmp_path / name).write_text("{}")
    (tmp_path / "io.execmesh.gone.json").write_text("{}")
    assert stale_files(tmp_path) == sorted([name, "io.execmesh.gone.json"])


def test_a_ping_tick_accepts_whatever_data_the_ping_source_was_given() -> None:
    assert parse_payload(PingTick.TYPE, {"tick": True, "note": "x"}) == PingTick()
