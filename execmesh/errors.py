"""One hierarchy for every error execmesh raises on purpose.

A handler edge maps these to status codes: ``PermanentError`` (the input can never succeed)
becomes a 4xx, ``TransientError`` (a dependency is down, try again) becomes a 5xx.
"""

from __future__ import annotations


class ExecmeshError(Exception):
    """Base of every error execmesh raises on purpose."""


class PermanentError(ExecmeshError):
    """The input can never succeed: retrying it is pointless."""


class InvalidEvent(PermanentError):
    """A CloudEvent that is malformed, of an unknown type or of an unknown schema version."""


class TransientError(ExecmeshError):
    """A dependency failed in a way that a retry may fix."""


class ConfigError(ExecmeshError):
    """Configuration or manifests that cannot be used as they are."""
