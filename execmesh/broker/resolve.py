"""Where a Knative Destination points on this machine.

A `ref: {kind: Service, name: X}` resolves through config/local.yaml (the port each local
process listens on); `uri:` is used as is, or appended to the ref's URL as Knative does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from execmesh.settings import LocalConfig

RESOLVABLE_KINDS = ("Service",)


class DestinationError(ValueError):
    """A destination that names nothing we can reach."""


@dataclass(frozen=True)
class Destination:
    ref_kind: str = ""
    ref_name: str = ""
    uri: str = ""

    def describe(self) -> str:
        if self.ref_name:
            kind = "ksvc" if self.ref_kind == "Service" else self.ref_kind.lower()
            return f"{kind}:{self.ref_name}{self.uri}"
        return self.uri


def parse_destination(raw: Any, where: str) -> Destination:
    if not isinstance(raw, dict):
        raise DestinationError(f"{where}: must be a mapping with `ref` or `uri`")
    uri = raw.get("uri") or ""
    ref = raw.get("ref")
    if not isinstance(uri, str):
        raise DestinationError(f"{where}.uri: must be a string")
    if ref is None:
        if not uri.startswith(("http://", "https://")):
            raise DestinationError(f"{where}: needs `ref` or an absolute http(s) `uri`")
        return Destination(uri=uri)
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("kind"):
        raise DestinationError(f"{where}.ref: needs `kind` and `name`")
    if ref["kind"] not in RESOLVABLE_KINDS:
        raise DestinationError(
            f"{where}.ref: kind {ref['kind']!r} cannot be resolved locally "
            f"(supported: {', '.join(RESOLVABLE_KINDS)})"
        )
    return Destination(ref_kind=str(ref["kind"]), ref_name=str(ref["name"]), uri=uri)


def resolve(destination: Destination, local: LocalConfig) -> str:
    if not destination.ref_name:
        return destination.uri
    try:
        base = local.service_url(destination.ref_name)
    except KeyError:
        raise DestinationError(
            f"service {destination.ref_name!r} has no port in the local configuration"
        ) from None
    return base + destination.uri
