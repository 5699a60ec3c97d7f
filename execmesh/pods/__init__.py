"""Executor pods: the runtimes, the hardened manifest, the entry point and what it reports.

- ``runtimes``: ``resolve(language, version, backend)``, ``available(backend)`` and
  ``runtime_for_image(image)`` over the ``cluster`` catalogue and this machine's interpreters.
- ``manifest``: ``build_configmap``, ``build_pod`` and ``build_network_policy`` from an
  ``ExecutionSpec`` (pure; Kubernetes JSON shapes for the official client).
- ``entrypoint.sh``: the POSIX sh program the pod runs (its header documents its contract).
- ``report``: ``parse_pod_report(termination_message, log_bytes) -> PodReport``.
"""

from __future__ import annotations
