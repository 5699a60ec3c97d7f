from __future__ import annotations

import pytest

from execmesh.broker.delivery import (
    Delivery,
    DeliverySpec,
    DeliverySyntaxError,
    backoff,
    is_retriable,
    merge,
    parse_delivery,
    parse_duration,
)
from execmesh.broker.resolve import Destination


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1S", 1.0),
        ("PT0.2S", 0.2),
        ("PT1M30S", 90.0),
        ("PT2H", 7200.0),
        ("P1D", 86400.0),
        ("P1DT1S", 86401.0),
    ],
)
def test_iso_8601_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1s", "PT", "P", "PTS", "PT-1S", "", 5, None])
def test_malformed_durations_are_refused(text: object) -> None:
    with pytest.raises(DeliverySyntaxError):
        parse_duration(text)


def test_exponential_backoff_doubles_per_retry() -> None:
    delivery = Delivery(retry=3, backoff_policy="exponential", backoff_delay=0.1)
    assert [backoff(delivery, k) for k in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8])


def test_linear_backoff_grows_by_the_delay_per_retry() -> None:
    delivery = Delivery(retry=3, backoff_policy="linear", backoff_delay=0.1)
    assert [backoff(delivery, k) for k in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])


def test_trigger_delivery_is_merged_field_by_field_over_the_broker_delivery() -> None:
    sink = Destination(uri="http://127.0.0.1:1/dlq")
    broker = DeliverySpec(retry=5, backoff_delay=2.0, dead_letter_sink=sink, timeout=3.0)
    trigger = DeliverySpec(retry=1, backoff_policy="linear")
    assert merge(trigger, broker) == Delivery(
        retry=1, backoff_policy="linear", backoff_delay=2.0, timeout=3.0, dead_letter_sink=sink
    )


def test_without_any_delivery_there_is_no_retry() -> None:
    assert merge(DeliverySpec(), DeliverySpec()).retry == 0


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (500, True),
        (502, True),
        (503, True),
        (404, True),
        (408, True),
        (409, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (413, False),
        (422, False),
    ],
)
def test_only_server_errors_and_the_knative_retriable_4xx_are_retried(
    status: int, retried: bool
) -> None:
    assert is_retriable(status) is retried


def test_a_delivery_block_is_parsed_with_its_dead_letter_sink() -> None:
    spec = parse_delivery(
        {
            "retry": 3,
            "backoffPolicy": "linear",
            "backoffDelay": "PT0.5S",
            "timeout": "PT10S",
            "deadLetterSink": {"ref": {"kind": "Service", "name": "dlq"}},
        },
        "spec.delivery",
    )
    assert spec == DeliverySpec(3, "linear", 0.5, 10.0, Destination("Service", "dlq"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"retry": -1}, "retry"),
        ({"retry": "3"}, "retry"),
        ({"backoffPolicy": "fibonacci"}, "backoffPolicy"),
        ({"backoffDelay": "1s"}, "backoffDelay"),
        ({"timeout": "soon"}, "timeout"),
        # An HTTP client takes a zero timeout as none: a hung subscriber would wedge the lane.
        ({"timeout": "PT0S"}, "timeout"),
        ({"retries": 3}, "unknown field"),
        ({"deadLetterSink": {"uri": "dlq"}}, "deadLetterSink"),
    ],
)
def test_bad_delivery_blocks_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(DeliverySyntaxError, match=message):
        parse_delivery(raw, "spec.delivery")
