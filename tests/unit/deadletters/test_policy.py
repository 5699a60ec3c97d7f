from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from execmesh.deadletters.letter import ERROR_CODE, ERROR_DATA, ERROR_DEST, from_cloud_event
from execmesh.deadletters.policy import (
    DEFAULT_POLICY,
    IMMEDIATE,
    NEVER,
    RetryPolicy,
    policy_for,
    scaled_policies,
)

RNG = random.Random(7)


def test_backoff_doubles_up_to_the_maximum_delay() -> None:
    policy = RetryPolicy(5, timedelta(seconds=1), timedelta(seconds=5), jitter=0)
    delays = [policy.delay_before(n, RNG) for n in range(1, 6)]
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 5, 5)]


def test_no_retry_is_offered_past_the_last_attempt() -> None:
    policy = RetryPolicy(2, timedelta(seconds=1), timedelta(seconds=5))
    assert policy.delay_before(3, RNG) is None


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = RetryPolicy(3, timedelta(seconds=10), timedelta(seconds=60), jitter=0.2)
    delays = {policy.delay_before(1, RNG) for _ in range(50)}
    assert len(delays) > 1
    assert all(timedelta(seconds=8) <= d <= timedelta(seconds=12) for d in delays if d)


@pytest.mark.parametrize(
    ("event_type", "policy"),
    [
        ("dev.knative.sources.ping", NEVER),
        ("io.execmesh.pod.delete_requested", IMMEDIATE),
        ("io.execmesh.result.stored", DEFAULT_POLICY),
    ],
)
def test_each_category_has_its_policy(event_type: str, policy: RetryPolicy) -> None:
    assert policy_for(event_type) == policy


def test_execution_events_are_retried_harder_than_the_default() -> None:
    assert policy_for("io.execmesh.execution.completed").max_attempts > DEFAULT_POLICY.max_attempts


def test_a_dead_letter_keeps_the_original_event_apart_from_the_error_details() -> None:
    attributes = {
        "specversion": "1.0",
        "id": "e1",
        "source": "/s",
        "type": "io.execmesh.pod.created",
        ERROR_DEST: "http://saga/",
        ERROR_CODE: "500",
        ERROR_DATA: "Ym9vbQ==",
    }
    now = datetime(2026, 1, 1, tzinfo=UTC)
    letter = from_cloud_event(attributes, {"a": 1}, now)
    assert letter.destination == "http://saga/"
    assert letter.error_code == 500
    assert letter.error_data == "boom"
    assert set(letter.attributes) == {"specversion", "id", "source", "type"}
    again = from_cloud_event(attributes, {"a": 1}, now + timedelta(minutes=1))
    assert again.id == letter.id


def test_a_delay_scale_shrinks_every_delay_but_keeps_the_attempts() -> None:
    fast = scaled_policies(0.01)("io.execmesh.execution.completed")
    normal = policy_for("io.execmesh.execution.completed")
    assert fast.max_attempts == normal.max_attempts
    assert fast.base_delay == normal.base_delay / 100
    assert fast.max_delay == normal.max_delay / 100
    assert scaled_policies(1) is policy_for
