from __future__ import annotations

from kube_harness import sink

__all__ = ["sink"]
