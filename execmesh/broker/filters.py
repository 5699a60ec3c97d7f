"""Which events a trigger wants: Knative's `filter.attributes` and the `filters` dialects.

Pure functions over an event's attributes (every value as its canonical string), so that a
trigger's decision is a table test. A trigger carrying both `filter` and `filters` is judged by
`filters` alone, as Knative does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*$")
DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not")


@dataclass(frozen=True)
class AttributesFilter:
    """`filter.attributes`: every listed attribute must equal its value; "" means present."""

    attributes: Mapping[str, str]


@dataclass(frozen=True)
class Exact:
    attribute: str
    value: str


@dataclass(frozen=True)
class Prefix:
    attribute: str
    value: str


@dataclass(frozen=True)
class Suffix:
    attribute: str
    value: str


@dataclass(frozen=True)
class All:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    filter: Filter


Filter = AttributesFilter | Exact | Prefix | Suffix | All | AnyOf | Not
MATCH_ALL = All(())


class FilterSyntaxError(ValueError):
    """A filter expression Knative would refuse; the message names the offending part."""


def matches(filter_: Filter, attributes: Mapping[str, str]) -> bool:
    match filter_:
        case AttributesFilter(wanted):
            return all(_attribute_matches(attributes.get(k), v) for k, v in wanted.items())
        case Exact(name, value):
            return attributes.get(name) == value
        case Prefix(name, value):
            actual = attributes.get(name)
            return actual is not None and actual.startswith(value)
        case Suffix(name, value):
            actual = attributes.get(name)
            return actual is not None and actual.endswith(value)
        case All(filters):
            return all(matches(f, attributes) for f in filters)
        case AnyOf(filters):
            return any(matches(f, attributes) for f in filters)
        case Not(inner):
            return not matches(inner, attributes)
    raise TypeError(f"not a filter: {filter_!r}")


def _attribute_matches(actual: str | None, wanted: str) -> bool:
    if actual is None:
        return False
    return wanted == "" or actual == wanted


def trigger_filter(filter_spec: Any, filters_spec: Any) -> Filter:
    """The filter of a trigger spec from its raw `filter` and `filters` fields."""
    if filters_spec is not None:
        if not isinstance(filters_spec, list):
            raise FilterSyntaxError("filters: must be a list of filter expressions")
        return All(tuple(parse_filter(f, f"filters[{i}]") for i, f in enumerate(filters_spec)))
    if filter_spec is None:
        return MATCH_ALL
    if not isinstance(filter_spec, dict) or set(filter_spec) - {"attributes"}:
        raise FilterSyntaxError("filter: only `attributes` is supported")
    attributes = filter_spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise FilterSyntaxError("filter.attributes: must be a mapping")
    for name, value in attributes.items():
        _check_attribute_name(name, "filter.attributes")
        if not isinstance(value, str):
            raise FilterSyntaxError(f"filter.attributes.{name}: value must be a string")
    return AttributesFilter(dict(attributes))


def parse_filter(raw: Any, where: str) -> Filter:
    """One Subscriptions API filter expression; exactly one dialect, as Knative validates."""
    if not isinstance(raw, dict):
        raise FilterSyntaxError(f"{where}: must be a mapping with one dialect")
    unknown = sorted(set(raw) - set(DIALECTS))
    if unknown:
        raise FilterSyntaxError(
            f"{where}: unsupported filter dialect {', '.join(unknown)} "
            f"(supported: {', '.join(DIALECTS)})"
        )
    present = [d for d in DIALECTS if raw.get(d) not in (None, {}, [])]
    if len(present) > 1:
        raise FilterSyntaxError(f"{where}: multiple dialects {present}, only one is allowed")
    if not present:
        return MATCH_ALL
    dialect = present[0]
    body = raw[dialect]
    if dialect in ("exact", "prefix", "suffix"):
        return _single_attribute(dialect, body, f"{where}.{dialect}")
    if dialect == "not":
        return Not(parse_filter(body, f"{where}.not"))
    if not isinstance(body, list):
        raise FilterSyntaxError(f"{where}.{dialect}: must be a list of filter expressions")
    parsed = tuple(parse_filter(f, f"{where}.{dialect}[{i}]") for i, f in enumerate(body))
    return All(parsed) if dialect == "all" else AnyOf(parsed)


def _single_attribute(dialect: str, body: Any, where: str) -> Filter:
    if not isinstance(body, dict) or len(body) != 1:
        raise FilterSyntaxError(f"{where}: must hold exactly one attribute: value")
    ((name, value),) = body.items()
    _check_attribute_name(name, where)
    if not isinstance(value, str):
        raise FilterSyntaxError(f"{where}.{name}: value must be a string")
    if dialect == "exact":
        return Exact(name, value)
    return Prefix(name, value) if dialect == "prefix" else Suffix(name, value)


def _check_attribute_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
        raise FilterSyntaxError(
            f"{where}: attribute name {name!r} must be lowercase alphanumeric, "
            "starting with a letter"
        )
