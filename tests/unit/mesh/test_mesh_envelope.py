from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from execmesh.errors import InvalidEvent
from execmesh.events import ExecutionCancelled, ExecutionCancelRequested, UnknownSchemaVersion
from execmesh.mesh.envelope import IncomingEvent, decode_event

CANCEL = ExecutionCancelRequested(execution_id="ex-1", reason="changed my mind")


def binary_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "evt-1",
        "ce-source": "/execmesh/api",
        "ce-type": CANCEL.TYPE,
        "ce-subject": "ex-1",
        "ce-time": "2026-01-01T00:00:00Z",
        "ce-partitionkey": "ex-1",
    }
    headers.update(overrides)
    return {name: value for name, value in headers.items() if value != ""}


def structured_body(**overrides: object) -> bytes:
    document: dict[str, object] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/execmesh/api",
        "type": CANCEL.TYPE,
        "subject": "ex-1",
        "datacontenttype": "application/json",
        "partitionkey": "ex-1",
        "data": CANCEL.to_data(),
    }
    document.update(overrides)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


STRUCTURED = {"content-type": "application/cloudevents+json"}


def test_a_binary_event_decodes_to_its_attributes_and_typed_payload() -> None:
    event = decode_event(binary_headers(), json.dumps(CANCEL.to_data()).encode())

    assert (event.id, event.type, event.source, event.subject) == (
        "evt-1",
        CANCEL.TYPE,
        "/execmesh/api",
        "ex-1",
    )
    assert event.time == datetime(2026, 1, 1, tzinfo=UTC)
    assert event.payload == CANCEL
    assert event.partition_key == "ex-1"
    assert not event.is_replay


def test_a_structured_event_decodes_to_the_same_value_as_a_binary_one() -> None:
    binary = decode_event(binary_headers(**{"ce-time": ""}), json.dumps(CANCEL.to_data()).encode())
    structured = decode_event(STRUCTURED, structured_body())

    assert (structured.id, structured.type, structured.payload, structured.extensions) == (
        binary.id,
        binary.type,
        binary.payload,
        binary.extensions,
    )


def test_replay_markers_are_read_from_extensions() -> None:
    headers = binary_headers(**{"ce-replayedfrom": "evt-0", "ce-replaysession": "rs-1"})
    event = decode_event(headers, json.dumps(CANCEL.to_data()).encode())

    assert event.replayed_from == "evt-0"
    assert event.replay_session == "rs-1"
    assert event.is_replay


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (binary_headers(**{"ce-id": ""}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(**{"ce-source": ""}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(**{"ce-type": ""}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(**{"ce-specversion": ""}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(**{"ce-specversion": "0.3"}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(**{"ce-specversion": "2.0"}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(**{"ce-time": "yesterday"}), json.dumps(CANCEL.to_data()).encode()),
        (binary_headers(), b"{not json"),
        (binary_headers(), b""),
        (binary_headers(), b"[1, 2]"),
        (binary_headers(**{"content-type": "text/plain"}), b"hello"),
        (binary_headers(**{"ce-type": "io.execmesh.nothing.happened"}), b"{}"),
        (binary_headers(), json.dumps({"execution_id": "Not Valid!"}).encode()),
        ({}, json.dumps(CANCEL.to_data()).encode()),
        (STRUCTURED, b"{broken"),
        (STRUCTURED, b'"a string"'),
        (STRUCTURED, structured_body(id=None)),
        (STRUCTURED, structured_body(id="")),
        (STRUCTURED, structured_body(data=None, data_base64="aGVsbG8=")),
    ],
)
def test_an_event_that_can_never_be_handled_is_invalid(
    headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(InvalidEvent):
        decode_event(headers, body)


def test_an_unknown_schema_version_is_told_apart_from_other_invalid_events() -> None:
    data = {**CANCEL.to_data(), "schema_version": 99}

    with pytest.raises(UnknownSchemaVersion):
        decode_event(binary_headers(), json.dumps(data).encode())


def test_an_event_built_from_a_payload_equals_the_decoded_one() -> None:
    built = IncomingEvent.of(CANCEL, id="evt-1", source="/execmesh/api")
    decoded = decode_event(binary_headers(**{"ce-time": ""}), json.dumps(CANCEL.to_data()).encode())

    assert (built.type, built.subject, built.extensions, built.payload) == (
        decoded.type,
        decoded.subject,
        decoded.extensions,
        decoded.payload,
    )


def test_a_payload_is_had_as_the_model_a_handler_expects() -> None:
    event = IncomingEvent.of(CANCEL, id="evt-1", source="/execmesh/api")

    assert event.payload_as(ExecutionCancelRequested) is CANCEL
    with pytest.raises(InvalidEvent, match=r"expected io\.execmesh\.execution\.cancelled,"):
        event.payload_as(ExecutionCancelled)
