from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from execmesh.errors import TransientError
from execmesh.events import (
    ExecutionFailed,
    ExecutionSpec,
    FailureType,
    Limits,
    PodCreated,
    PodCreateRequested,
    PodDeleted,
    PodDeleteRequested,
)
from execmesh.kube.client import ApiRefused, clients_for_url, translate
from execmesh.kube.worker import PodWorker, pod_limits
from execmesh.pods import runtimes
from execmesh.pods.manifest import MiB

PYTHON = runtimes.Runtime(
    language="python",
    version="3.11",
    image="python:3.11-slim",
    source_file="main.py",
    run_command=("python3", "main.py"),
    version_command=("python3", "--version"),
)


def resolve_python(
    language: str, version: str | None, backend: runtimes.Backend
) -> runtimes.Runtime:
    if language != "python":
        raise runtimes.UnknownRuntime(f"{language} is not available; available: python 3.11")
    return PYTHON


def a_request(language: str = "python", memory_mb: int = 128) -> PodCreateRequested:
    return PodCreateRequested(
        execution_id="e-1",
        spec=ExecutionSpec(language=language, version="3.11", script="print(1)"),
        limits=Limits(timeout_seconds=5, memory_mb=memory_mb, cpu_millis=500, output_bytes=1024),
    )


@dataclass
class FakeApiServer:
    """Answers each (method, resource) with a fixed status and records what it was asked."""

    statuses: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str) -> int:
        self.requests.append((method, path))
        resource = path.split("?")[0].split("/")[-1 if method == "POST" else -2]
        # By default every create succeeds, every delete too, and what was deleted is gone.
        default = {"POST": 201, "DELETE": 200, "GET": 404}[method]
        return self.statuses.get((method, resource), default)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status = fake.answer(self.command, self.path)
            body = json.dumps({"kind": "Status", "code": status, "message": f"status {status}"})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_POST = do_DELETE = do_GET = _reply

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def a_worker(api: FakeApiServer) -> PodWorker:
    return PodWorker(clients_for_url(api.url, "execmesh"), resolve=resolve_python)


def test_create_makes_the_policy_the_configmap_and_the_pod_in_that_order(
    api: FakeApiServer,
) -> None:
    created = a_worker(api).create(a_request())
    assert created == PodCreated(execution_id="e-1", namespace="execmesh", pod_name="exec-e-1")
    assert [path.split("/")[-1] for _, path in api.requests] == [
        "networkpolicies",
        "configmaps",
        "pods",
    ]


def test_objects_that_exist_already_count_as_created(api: FakeApiServer) -> None:
    api.statuses = {
        ("POST", "networkpolicies"): 409,
        ("POST", "configmaps"): 409,
        ("POST", "pods"): 409,
    }
    assert isinstance(a_worker(api).create(a_request()), PodCreated)


def test_the_network_policy_is_created_once_per_process(api: FakeApiServer) -> None:
    worker = a_worker(api)
    worker.create(a_request())
    worker.create(a_request())
    policies = [path for _, path in api.requests if path.endswith("networkpolicies")]
    assert len(policies) == 1


def test_a_node_that_serves_no_network_policy_is_nothing_to_enforce(api: FakeApiServer) -> None:
    api.statuses = {("POST", "networkpolicies"): 404}
    worker = a_worker(api)
    assert isinstance(worker.create(a_request()), PodCreated)
    worker.create(a_request())
    assert sum(path.endswith("networkpolicies") for _, path in api.requests) == 1


def test_an_unknown_runtime_fails_the_execution_as_image_without_calling_the_api(
    api: FakeApiServer,
) -> None:
    failed = a_worker(api).create(a_request(language="cobol"))
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.IMAGE
    assert "available: python 3.11" in failed.message
    assert api.requests == []


@pytest.mark.parametrize("status", [400, 403, 422])
def test_a_refusal_of_the_pod_fails_the_execution_as_api(api: FakeApiServer, status: int) -> None:
    api.statuses = {("POST", "pods"): status}
    failed = a_worker(api).create(a_request())
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.API
    assert f"({status})" in failed.message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_broken_api_is_transient(api: FakeApiServer, status: int) -> None:
    api.statuses = {("POST", "configmaps"): status}
    with pytest.raises(TransientError, match=str(status)):
        a_worker(api).create(a_request())


def test_delete_removes_the_pod_then_the_configmap(api: FakeApiServer) -> None:
    deleted = a_worker(api).delete(PodDeleteRequested(execution_id="e-1", reason="cleanup"))
    assert deleted == PodDeleted(execution_id="e-1", namespace="execmesh", pod_name="exec-e-1")
    assert [(method, path.split("?")[0]) for method, path in api.requests] == [
        ("DELETE", "/api/v1/namespaces/execmesh/pods/exec-e-1"),
        ("GET", "/api/v1/namespaces/execmesh/pods/exec-e-1"),
        ("DELETE", "/api/v1/namespaces/execmesh/configmaps/exec-e-1"),
    ]


def test_a_pod_that_does_not_terminate_in_time_makes_the_delete_transient(
    api: FakeApiServer,
) -> None:
    api.statuses = {("GET", "pods"): 200}
    worker = PodWorker(
        clients_for_url(api.url, "execmesh"), resolve=resolve_python, termination_wait_seconds=0.2
    )
    with pytest.raises(TransientError, match="still terminating"):
        worker.delete(PodDeleteRequested(execution_id="e-1", reason="cancelled"))


def test_deleting_what_is_gone_already_is_done(api: FakeApiServer) -> None:
    api.statuses = {("DELETE", "pods"): 404, ("DELETE", "configmaps"): 404}
    deleted = a_worker(api).delete(PodDeleteRequested(execution_id="e-1", reason="cleanup"))
    assert isinstance(deleted, PodDeleted)


def test_a_refused_delete_is_permanent(api: FakeApiServer) -> None:
    api.statuses = {("DELETE", "pods"): 403}
    with pytest.raises(ApiRefused):
        a_worker(api).delete(PodDeleteRequested(execution_id="e-1", reason="cleanup"))


def test_an_unreachable_api_is_transient() -> None:
    worker = PodWorker(clients_for_url("http://127.0.0.1:1", "execmesh"), resolve=resolve_python)
    with pytest.raises(TransientError, match="unreachable"):
        worker.create(a_request())


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ApiException(status=400), ApiRefused),
        (ApiException(status=404), ApiRefused),
        (ApiException(status=409), TransientError),
        (ApiException(status=429), TransientError),
        (ApiException(status=500), TransientError),
        (ApiException(status=0), TransientError),
        (MaxRetryError(None, "/"), TransientError),  # type: ignore[arg-type]
        (ConnectionResetError(), TransientError),
    ],
)
def test_api_failures_are_permanent_only_when_refused(error: Exception, kind: type) -> None:
    assert type(translate(error, "do it")) is kind


def test_pod_limits_follow_the_granted_limits() -> None:
    limits = pod_limits(Limits(timeout_seconds=2.5, memory_mb=256, cpu_millis=250, output_bytes=99))
    assert (limits.cpu_millicores, limits.memory_bytes) == (250, 256 * MiB)
    assert (limits.timeout_seconds, limits.output_bytes) == (2.5, 99)


def test_scratch_space_never_exceeds_a_small_memory_limit() -> None:
    assert (
        pod_limits(
            Limits(timeout_seconds=1, memory_mb=32, cpu_millis=100, output_bytes=1)
        ).tmp_bytes
        == 32 * MiB
    )


def test_scratch_space_grows_to_what_the_runtime_needs_within_the_memory_limit() -> None:
    granted = Limits(timeout_seconds=30, memory_mb=512, cpu_millis=500, output_bytes=1)
    assert pod_limits(granted, min_tmp_bytes=128 * MiB).tmp_bytes == 128 * MiB


def test_a_spec_no_pod_can_honour_fails_the_execution_without_calling_the_api(
    api: FakeApiServer,
) -> None:
    failed = a_worker(api).create(a_request(memory_mb=8))
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type is FailureType.INTERNAL
    assert "memory_bytes" in failed.message
    assert api.requests == []
