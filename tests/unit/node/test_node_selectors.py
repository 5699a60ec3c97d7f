from __future__ import annotations

import pytest

from execmesh.node.selectors import (
    SelectorError,
    fields_match,
    labels_match,
    object_filter,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "execmesh", "tier": "x", "env": "dev"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=execmesh", True),
        ("app==execmesh", True),
        ("app=other", False),
        ("app!=other", True),
        ("missing!=x", True),
        ("tier in (x,y)", True),
        ("tier in (y, z)", False),
        ("tier notin (y,z)", True),
        ("missing notin (y)", True),
        ("missing in (y)", False),
        ("env", True),
        ("missing", False),
        ("!missing", True),
        ("!env", False),
        ("app=execmesh,tier in (x, y),env,!missing", True),
        ("app=execmesh,tier=y", False),
        ("execmesh.io/execution-id", False),
    ],
)
def test_label_selectors_match_as_the_api_server_does(selector: str, expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), LABELS) is expected


def test_a_label_selector_matches_an_object_with_no_labels_only_through_negations() -> None:
    assert labels_match(parse_label_selector("!a,b!=c,d notin (e)"), None)
    assert not labels_match(parse_label_selector("a"), None)


@pytest.mark.parametrize("selector", ["a in x", "!a in (x)", "a=b=c", "=b", "a in (x"])
def test_a_malformed_label_selector_is_rejected(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_field_selectors_compare_dotted_paths_with_equality_and_inequality() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}}
    assert fields_match(parse_field_selector("metadata.name=p,status.phase!=Failed"), pod)
    assert not fields_match(parse_field_selector("metadata.name==q"), pod)
    assert fields_match(parse_field_selector("spec.nodeName="), pod)


def test_an_object_filter_combines_labels_and_fields() -> None:
    matches = object_filter("app=execmesh", "metadata.name=p")
    assert matches({"metadata": {"name": "p", "labels": {"app": "execmesh"}}})
    assert not matches({"metadata": {"name": "q", "labels": {"app": "execmesh"}}})
    assert not matches({"metadata": {"name": "p"}})
