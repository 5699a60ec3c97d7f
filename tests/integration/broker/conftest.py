"""Fixtures of the broker's integration tests; the harness itself is in broker_harness.py."""

from __future__ import annotations

from broker_harness import namespace, start_broker, subscriber

__all__ = ["namespace", "start_broker", "subscriber"]
