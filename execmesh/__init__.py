"""execmesh: untrusted code as an event-driven, serverless pipeline."""

from __future__ import annotations

__version__ = "0.1.0"
