from __future__ import annotations

from execmesh.events import MAX_INLINE_OUTPUT_BYTES, StreamOutput
from execmesh.results.outputs import InMemoryOutputStore, read_stream, stream_output


def test_small_text_travels_inline_as_utf8() -> None:
    store = InMemoryOutputStore()
    output = stream_output(store, "e1", "stdout", "héllo\n".encode())
    assert output == StreamOutput(data="héllo\n", size=7)
    assert store.outputs == {}


def test_small_binary_travels_inline_as_base64() -> None:
    store = InMemoryOutputStore()
    output = stream_output(store, "e1", "stderr", b"\xff\x00\xfe")
    assert (output.encoding, output.data, output.ref) == ("base64", "/wD+", None)
    assert read_stream(store, output) == b"\xff\x00\xfe"


def test_output_at_the_inline_limit_stays_inline_and_one_byte_more_is_stored() -> None:
    store = InMemoryOutputStore()
    at_limit = stream_output(store, "e1", "stdout", b"a" * MAX_INLINE_OUTPUT_BYTES)
    over = stream_output(store, "e1", "stderr", b"a" * (MAX_INLINE_OUTPUT_BYTES + 1))
    assert at_limit.ref is None and at_limit.size == MAX_INLINE_OUTPUT_BYTES
    assert over.ref == "e1/stderr" and over.data == ""
    assert store.outputs["e1/stderr"] == b"a" * (MAX_INLINE_OUTPUT_BYTES + 1)


def test_inline_output_fits_the_event_model_even_as_base64() -> None:
    data = bytes(range(256)) * (MAX_INLINE_OUTPUT_BYTES // 256)
    output = stream_output(InMemoryOutputStore(), "e1", "stdout", data)
    assert StreamOutput.model_validate(output.model_dump()) == output
    assert read_stream(InMemoryOutputStore(), output) == data


def test_truncation_is_carried_through() -> None:
    output = stream_output(InMemoryOutputStore(), "e1", "stdout", b"cut", truncated=True)
    assert output.truncated
