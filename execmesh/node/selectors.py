"""Kubernetes label and field selectors, parsed once and matched against object dicts.

Label selectors follow the API server grammar: equality (``a=b``, ``a==b``, ``a!=b``),
sets (``a in (x,y)``, ``a notin (x)``) and existence (``a``, ``!a``), joined by commas.
Field selectors support the equality forms over dotted paths such as ``metadata.name``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from execmesh.errors import PermanentError


class SelectorError(PermanentError):
    """A selector string that the API server would reject with 400."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of: =, !=, in, notin, exists, !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # != and notin


Selector = tuple[Requirement, ...]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside a ``(...)`` value set."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def parse_label_selector(text: str | None) -> Selector:
    if not text or not text.strip():
        return ()
    return tuple(_parse_term(term) for term in _split_terms(text))


def _parse_term(term: str) -> Requirement:
    if match := _SET_RE.match(term):
        negated, key, operator, raw_values = match.groups()
        if negated:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        values = frozenset(v.strip() for v in raw_values.split(",") if v.strip())
        return Requirement(key, operator, values)
    if match := _EQ_RE.match(term):
        key, operator, value = match.groups()
        return Requirement(key, "!=" if operator == "!=" else "=", frozenset({value}))
    if match := _EXISTS_RE.match(term):
        negated, key = match.groups()
        return Requirement(key, "!exists" if negated else "exists")
    raise SelectorError(f"unable to parse requirement: {term.strip()!r}")


def labels_match(selector: Selector, labels: Mapping[str, str] | None) -> bool:
    present = labels or {}
    return all(requirement.matches(present) for requirement in selector)


FieldSelector = tuple[tuple[str, bool, str], ...]  # (dotted path, equal?, value)


def parse_field_selector(text: str | None) -> FieldSelector:
    if not text or not text.strip():
        return ()
    parsed = []
    for term in _split_terms(text):
        match = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise SelectorError(f"invalid field selector: {term.strip()!r}")
        path, operator, value = match.groups()
        parsed.append((path, operator != "!=", value))
    return tuple(parsed)


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return "" if node is None else str(node)


def fields_match(selector: FieldSelector, obj: Mapping[str, Any]) -> bool:
    return all((_lookup(obj, path) == value) == equal for path, equal, value in selector)


def object_filter(
    label_selector: str | None, field_selector: str | None
) -> Callable[[dict[str, Any]], bool]:
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector)

    def matches(obj: dict[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        return labels_match(labels, metadata.get("labels")) and fields_match(fields, obj)

    return matches
