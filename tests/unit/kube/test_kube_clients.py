from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from execmesh.errors import ConfigError
from execmesh.kube.client import build_clients, clients_for_url, unvalidated
from execmesh.settings import Settings


def test_the_local_backend_talks_to_the_node_of_the_local_config() -> None:
    clients = build_clients(Settings.from_env({"EXECMESH_POD_BACKEND": "local"}))
    assert clients.core.api_client.configuration.host == "http://127.0.0.1:8081"
    assert clients.networking.api_client is clients.core.api_client
    assert (clients.backend, clients.namespace) == ("local", "execmesh")


def test_the_executor_namespace_comes_from_the_settings() -> None:
    settings = Settings.from_env({"EXECMESH_POD_NAMESPACE": "runs"})
    assert build_clients(settings).namespace == "runs"


def test_a_cluster_backend_reads_the_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    settings = Settings.from_env({"EXECMESH_POD_BACKEND": "cluster", "KUBECONFIG": str(kubeconfig)})
    clients = build_clients(settings)
    assert clients.backend == "cluster"
    assert clients.core.api_client.configuration.host == "https://10.0.0.1:6443"


@pytest.mark.skipif(
    "KUBERNETES_SERVICE_HOST" in os.environ, reason="inside a pod, in-cluster config exists"
)
def test_a_cluster_backend_without_any_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no usable cluster configuration"):
        build_clients(Settings.from_env({"EXECMESH_POD_BACKEND": "cluster"}))


def test_an_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="EXECMESH_POD_BACKEND"):
        build_clients(Settings.from_env({"EXECMESH_POD_BACKEND": "docker"}))


def _sent_requests(monkeypatch: pytest.MonkeyPatch, api: Any) -> list[tuple[Any, ...]]:
    """Capture what the client would send instead of sending it."""
    sent: list[tuple[Any, ...]] = []

    def call_api(*request: Any, **options: Any) -> Any:
        sent.append(request)
        raise RuntimeError("not sent")

    monkeypatch.setattr(api.api_client, "call_api", call_api)
    return sent


def test_an_unvalidated_call_sends_the_same_request_without_the_argument_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = clients_for_url("http://127.0.0.1:9", "ns").core
    sent = _sent_requests(monkeypatch, api)
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    for create in (api.create_namespaced_pod, unvalidated(api.create_namespaced_pod)):
        with pytest.raises(RuntimeError, match="not sent"):
            create("ns", pod, _preload_content=False)
    assert len(sent) == 2 and sent[0] == sent[1]
    method, url, _, body = sent[0][:4]
    assert (method, url, body) == ("POST", "http://127.0.0.1:9/api/v1/namespaces/ns/pods", pod)

    # What is skipped: the client's own check of the arguments' types.
    with pytest.raises(ValidationError):
        api.create_namespaced_pod(7, pod)
    with pytest.raises(RuntimeError, match="not sent"):
        unvalidated(api.create_namespaced_pod)(7, pod)


def test_a_callable_that_is_not_a_validated_method_is_left_as_it_is() -> None:
    def plain(namespace: str) -> str:
        return namespace

    assert unvalidated(plain) is plain
