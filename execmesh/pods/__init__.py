"""Executor pods: the runtimes, the hardened manifest, the entry point and what it reports."""

from __future__ import annotations
