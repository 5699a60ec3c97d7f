from __future__ import annotations

import base64
import json

import pytest

from execmesh.broker.cloudevent import Event, from_http, to_binary_headers
from execmesh.errors import InvalidEvent

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "e-1",
    "ce-source": "/execmesh/api",
    "ce-type": "io.execmesh.execution.requested",
    "ce-partitionkey": "exec-1",
    "content-type": "application/json",
}


def structured(**overrides: object) -> bytes:
    envelope = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/execmesh/api",
        "type": "io.execmesh.execution.requested",
        "data": {"code": "print(1)"},
    }
    envelope.update(overrides)
    return json.dumps({k: v for k, v in envelope.items() if v is not None}).encode()


def test_a_binary_event_keeps_its_data_bytes_and_attributes() -> None:
    event = from_http(BINARY, b'{"code": "print(1)"}')
    assert event.data == b'{"code": "print(1)"}'
    assert event.attributes["partitionkey"] == "exec-1"
    assert event.attributes["datacontenttype"] == "application/json"


def test_a_structured_event_becomes_attributes_and_json_data() -> None:
    event = from_http({"content-type": "application/cloudevents+json"}, structured())
    assert event.attributes["type"] == "io.execmesh.execution.requested"
    assert json.loads(event.data) == {"code": "print(1)"}
    assert event.attributes["datacontenttype"] == "application/json"


def test_structured_data_base64_is_decoded() -> None:
    body = structured(data=None, data_base64=base64.b64encode(b"\x00\x01").decode())
    event = from_http({"content-type": "application/cloudevents+json; charset=utf-8"}, body)
    assert event.data == b"\x00\x01"


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_a_binary_event_missing_a_required_attribute_is_invalid(missing: str) -> None:
    headers = {k: v for k, v in BINARY.items() if k != missing}
    with pytest.raises(InvalidEvent, match=missing[3:]):
        from_http(headers, b"{}")


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({**BINARY, "ce-specversion": "0.3"}, b"{}", "specversion"),
        ({k: v for k, v in BINARY.items() if k != "ce-specversion"}, b"{}", "ce-specversion"),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "not valid JSON"),
        ({"content-type": "application/cloudevents+json"}, b"[1, 2]", "JSON object"),
        ({"content-type": "application/cloudevents+json"}, structured(id=None), "id"),
        ({"content-type": "application/cloudevents+json"}, structured(specversion="2.0"), "2.0"),
        ({"content-type": "application/cloudevents+json"}, structured(source=None), "source"),
        ({"content-type": "application/json"}, structured(), "not a CloudEvent"),
        ({"content-type": "text/plain"}, b"hello", "not a CloudEvent"),
        ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batch"),
        ({**BINARY, "ce-time": "yesterday"}, b"{}", "RFC 3339"),
        ({"content-type": "application/cloudevents+json"}, structured(type={"a": 1}), "type"),
    ],
)
def test_malformed_events_are_refused_with_a_reason(
    headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        from_http(headers, body)


def test_binary_headers_percent_encode_what_http_cannot_carry_and_round_trip() -> None:
    event = Event(
        {**{k[3:]: v for k, v in BINARY.items() if k.startswith("ce-")}, "subject": 'café "50%"'},
        b"x",
    )
    headers = to_binary_headers(event)
    assert headers["ce-subject"] == "caf%C3%A9%20%2250%25%22"
    assert from_http(headers, b"x").attributes["subject"] == 'café "50%"'
