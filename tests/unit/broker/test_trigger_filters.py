from __future__ import annotations

from typing import Any

import pytest

from execmesh.broker.filters import (
    AttributesFilter,
    FilterSyntaxError,
    matches,
    parse_filter,
    trigger_filter,
)

EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/execmesh/api",
    "type": "io.execmesh.execution.requested",
    "partitionkey": "exec-42",
}


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"type": "io.execmesh.execution.requested"}, True),
        ({"type": "io.execmesh.execution.queued"}, False),
        ({"type": "io.execmesh.execution.requested", "source": "/execmesh/api"}, True),
        ({"type": "io.execmesh.execution.requested", "source": "/other"}, False),
        ({"partitionkey": ""}, True),
        ({"subject": ""}, False),
        ({"missing": "x"}, False),
        ({}, True),
    ],
)
def test_attributes_filter_matches_exactly_and_empty_means_present(
    attributes: dict[str, str], expected: bool
) -> None:
    assert matches(AttributesFilter(attributes), EVENT) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"exact": {"type": "io.execmesh.execution.requested"}}, True),
        ({"exact": {"type": "io.execmesh.execution"}}, False),
        ({"exact": {"subject": ""}}, False),
        ({"prefix": {"type": "io.execmesh.execution."}}, True),
        ({"prefix": {"type": "io.execmesh.pod."}}, False),
        ({"prefix": {"subject": ""}}, False),
        ({"suffix": {"type": ".requested"}}, True),
        ({"suffix": {"type": ".queued"}}, False),
        ({"all": [{"prefix": {"type": "io."}}, {"exact": {"source": "/execmesh/api"}}]}, True),
        ({"all": [{"prefix": {"type": "io."}}, {"exact": {"source": "/x"}}]}, False),
        ({"any": [{"exact": {"type": "nope"}}, {"suffix": {"source": "/api"}}]}, True),
        ({"any": [{"exact": {"type": "nope"}}, {"suffix": {"source": "/x"}}]}, False),
        ({"not": {"exact": {"type": "io.execmesh.execution.requested"}}}, False),
        ({"not": {"exact": {"type": "other"}}}, True),
        ({"not": {"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}}, True),
        ({}, True),
    ],
)
def test_each_filters_dialect_decides_as_knative_does(
    expression: dict[str, Any], expected: bool
) -> None:
    assert matches(parse_filter(expression, "filters[0]"), EVENT) is expected


def test_filters_list_requires_every_expression_to_match() -> None:
    both = trigger_filter(None, [{"prefix": {"type": "io."}}, {"exact": {"id": "e-1"}}])
    one = trigger_filter(None, [{"prefix": {"type": "io."}}, {"exact": {"id": "e-2"}}])
    assert matches(both, EVENT)
    assert not matches(one, EVENT)


def test_filters_wins_over_filter_when_both_are_given() -> None:
    chosen = trigger_filter({"attributes": {"type": "something.else"}}, [{"exact": {"id": "e-1"}}])
    assert matches(chosen, EVENT)


def test_a_trigger_without_filters_takes_every_event() -> None:
    assert matches(trigger_filter(None, None), EVENT)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"cesql": "type = 'x'"}, "unsupported filter dialect cesql"),
        ({"regex": {"type": "x"}}, "unsupported filter dialect regex"),
        ({"exact": {"type": "a", "source": "b"}}, "exactly one attribute"),
        ({"exact": {"type": "a"}, "prefix": {"type": "b"}}, "multiple dialects"),
        ({"exact": {"Type": "a"}}, "lowercase alphanumeric"),
        ({"exact": {"type": 3}}, "must be a string"),
        ({"all": {"exact": {"type": "a"}}}, "must be a list"),
        ({"not": {"sql": "x"}}, "unsupported filter dialect sql"),
        ("exact", "must be a mapping"),
    ],
)
def test_unsupported_or_malformed_filters_are_refused_with_the_reason(
    expression: Any, message: str
) -> None:
    with pytest.raises(FilterSyntaxError, match=message):
        parse_filter(expression, "filters[0]")
