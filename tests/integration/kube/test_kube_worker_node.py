from __future__ import annotations

from collections.abc import Iterator

import pytest
from kube_harness import NAMESPACE, Node, a_request, needs_sandbox, start_node
from kubernetes.client.exceptions import ApiException

from execmesh.events import ExecutionFailed, FailureType, PodCreated, PodDeleted, PodDeleteRequested
from execmesh.kube.worker import PodWorker
from execmesh.pods.manifest import EXECUTOR_SELECTOR

pytestmark = [pytest.mark.node, needs_sandbox]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from start_node(19901, tmp_path_factory)


@pytest.fixture
def worker(node: Node) -> PodWorker:
    return PodWorker(node.clients())


def exists(read: object, name: str) -> bool:
    try:
        read(name, NAMESPACE)  # type: ignore[operator]
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_a_retried_create_makes_one_pod_and_answers_created_both_times(
    node: Node, worker: PodWorker
) -> None:
    request = a_request("import time; time.sleep(5)")
    first, second = worker.create(request), worker.create(request)
    assert first == second
    assert isinstance(first, PodCreated)
    core = node.clients().core
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=EXECUTOR_SELECTOR).items
    assert [p.metadata.name for p in pods].count(first.pod_name) == 1
    assert exists(core.read_namespaced_config_map, first.pod_name)


def test_a_retried_delete_removes_pod_and_configmap_and_answers_deleted_both_times(
    node: Node, worker: PodWorker
) -> None:
    request = a_request("import time; time.sleep(5)")
    created = worker.create(request)
    assert isinstance(created, PodCreated)
    delete = PodDeleteRequested(execution_id=request.execution_id, reason="cancelled")
    first, second = worker.delete(delete), worker.delete(delete)
    assert (
        first
        == second
        == PodDeleted(
            execution_id=request.execution_id, namespace=NAMESPACE, pod_name=created.pod_name
        )
    )
    core = node.clients().core
    assert not exists(core.read_namespaced_pod, created.pod_name)
    assert not exists(core.read_namespaced_config_map, created.pod_name)


def test_deleting_an_execution_that_never_had_a_pod_is_done(worker: PodWorker) -> None:
    deleted = worker.delete(PodDeleteRequested(execution_id="never-created", reason="cleanup"))
    assert deleted.pod_name == "exec-never-created"


def test_an_unknown_language_fails_as_image_and_creates_nothing(
    node: Node, worker: PodWorker
) -> None:
    request = a_request("IDENTIFICATION DIVISION.", language="cobol")
    failed = worker.create(request)
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.IMAGE
    assert "available" in failed.message
    assert not exists(
        node.clients().core.read_namespaced_config_map, f"exec-{request.execution_id}"
    )


def test_an_unknown_version_names_the_versions_there_are(worker: PodWorker) -> None:
    failed = worker.create(a_request("print(1)", version="1.0"))
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.IMAGE
    assert "available python versions" in failed.message
