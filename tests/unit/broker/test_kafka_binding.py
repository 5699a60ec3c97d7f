from __future__ import annotations

import pytest

from execmesh.broker.cloudevent import Event
from execmesh.broker.kafka_binding import from_record, to_record
from execmesh.errors import InvalidEvent

EVENT = Event(
    {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/execmesh/api",
        "type": "io.execmesh.execution.requested",
        "partitionkey": "exec-1",
        "datacontenttype": "application/json",
    },
    b'{"a": 1}',
)


def test_an_event_is_stored_with_ce_headers_and_its_partition_key_as_record_key() -> None:
    record = to_record(EVENT)
    assert record.key == b"exec-1"
    assert record.value == b'{"a": 1}'
    assert ("ce_type", b"io.execmesh.execution.requested") in record.headers
    assert ("content-type", b"application/json") in record.headers
    assert ("ce_partitionkey", b"exec-1") in record.headers


def test_a_record_reads_back_as_the_same_event() -> None:
    record = to_record(EVENT)
    assert from_record(record.value, record.headers) == EVENT


def test_an_event_without_partition_key_has_no_record_key() -> None:
    attributes = {k: v for k, v in EVENT.attributes.items() if k != "partitionkey"}
    assert to_record(Event(attributes, b"")).key is None


def test_a_record_that_is_not_an_event_is_refused() -> None:
    with pytest.raises(InvalidEvent):
        from_record(b"raw", [("foo", b"bar")])
