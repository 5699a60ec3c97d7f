"""A real local node per test module, driven by the official kubernetes client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from node_harness import Node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = Node(tmp_path_factory.mktemp("node") / "data")
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def core(node: Node) -> client.CoreV1Api:
    return node.core()
