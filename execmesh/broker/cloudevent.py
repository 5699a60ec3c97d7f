"""CloudEvents 1.0 as the broker carries them: string attributes and opaque data bytes.

The broker forwards events it does not understand, so it keeps the data exactly as received
and never invents attributes. (The `cloudevents` SDK's `from_http` fills in a missing `id`
and `time` and re-serialises JSON data, which a broker must not do; this module therefore
implements the HTTP protocol binding's parsing rules itself.)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from execmesh.errors import InvalidEvent

REQUIRED = ("id", "source", "specversion", "type")
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_NAME = re.compile(r"^[a-z0-9]+$")
# HTTP binding, 3.1.3.2: these characters in a header value are percent-encoded.
_NEEDS_QUOTING = re.compile(r"[^\x21\x23\x24\x26-\x7e]")
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
# CloudEvents 1.0, type String: no control characters, surrogates or noncharacters. Besides
# the spec, a value with them cannot be sent on: an HTTP client refuses such a header.
_NOT_STRING = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


@dataclass(frozen=True)
class Event:
    attributes: Mapping[str, str]
    data: bytes = b""

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)

    def with_extensions(self, **extensions: str) -> Event:
        return Event({**self.attributes, **extensions}, self.data)


def validate(attributes: Mapping[str, str]) -> None:
    missing = [name for name in REQUIRED if not attributes.get(name)]
    if missing:
        raise InvalidEvent(f"missing required attribute(s): {', '.join(missing)}")
    if attributes["specversion"] != "1.0":
        raise InvalidEvent(f"unsupported specversion {attributes['specversion']!r}")
    for name, value in attributes.items():
        if not _NAME.match(name):
            raise InvalidEvent(f"invalid attribute name {name!r}")
        if _NOT_STRING.search(value):
            raise InvalidEvent(f"attribute {name!r} holds a control or non-character")
    time = attributes.get("time")
    if time is not None:
        try:
            datetime.fromisoformat(time)
        except ValueError:
            raise InvalidEvent(f"time {time!r} is not an RFC 3339 timestamp") from None


def from_http(headers: Mapping[str, str], body: bytes) -> Event:
    """An event from an HTTP request or response; `headers` keys are lowercase."""
    content_type = headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if "ce-specversion" in headers:
        return _from_binary(headers, content_type, body)
    if media_type == STRUCTURED:
        return _from_structured(body)
    if media_type == BATCH:
        raise InvalidEvent("batched CloudEvents are not accepted by the broker")
    if any(name.startswith("ce-") for name in headers):
        raise InvalidEvent("binary-mode event without ce-specversion")
    raise InvalidEvent(
        f"not a CloudEvent: no ce-specversion header and content type {content_type!r} "
        f"is not {STRUCTURED}"
    )


def _from_binary(headers: Mapping[str, str], content_type: str, body: bytes) -> Event:
    attributes = {
        name[3:]: unquote(value) if "%" in value else value
        for name, value in headers.items()
        if name.startswith("ce-")
    }
    if content_type:
        attributes["datacontenttype"] = content_type
    validate(attributes)
    return Event(attributes, body)


def _from_structured(body: bytes) -> Event:
    try:
        envelope = json.loads(body)
    # RecursionError: nesting deeper than the parser goes, which no event needs.
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidEvent(f"structured event is not valid JSON: {error}") from None
    if not isinstance(envelope, dict):
        raise InvalidEvent("structured event must be a JSON object")
    attributes: dict[str, str] = {}
    for name, value in envelope.items():
        if name in ("data", "data_base64") or value is None:
            continue
        attributes[name] = _attribute_string(name, value)
    data = _structured_data(envelope, attributes)
    validate(attributes)
    return Event(attributes, data)


def _attribute_string(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    raise InvalidEvent(f"attribute {name!r} must be a string, integer or boolean")


def _structured_data(envelope: dict[str, Any], attributes: dict[str, str]) -> bytes:
    if "data" in envelope and "data_base64" in envelope:
        raise InvalidEvent("structured event carries both data and data_base64")
    if envelope.get("data_base64") is not None:
        try:
            return base64.b64decode(envelope["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidEvent("data_base64 is not valid base64") from None
    if envelope.get("data") is None:
        return b""
    data = envelope["data"]
    content_type = attributes.setdefault("datacontenttype", "application/json")
    try:
        if isinstance(data, str) and not _is_json(content_type):
            return data.encode()
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \u escapes can carry
        raise InvalidEvent("data holds text that is not Unicode (a lone surrogate)") from None


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def to_binary_headers(event: Event) -> dict[str, str]:
    """HTTP headers of the event in binary mode."""
    headers: dict[str, str] = {}
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            headers["content-type"] = value
        elif _NEEDS_QUOTING.search(value):
            headers["ce-" + name] = quote(value, safe=_HEADER_SAFE)
        else:
            headers["ce-" + name] = value
    return headers


def is_cloudevent_response(headers: Mapping[str, str]) -> bool:
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return "ce-specversion" in headers or media_type == STRUCTURED
