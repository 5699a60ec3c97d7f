"""The official `kubernetes` clients, built once from Settings, for a cluster or the local node.

The worker and the monitor never know which backend they talk to: the local node serves the
same pod API, so the only difference is where the ``Configuration`` points.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from execmesh.errors import ConfigError, ExecmeshError, PermanentError, TransientError
from execmesh.settings import Settings

log = logging.getLogger(__name__)

Backend = Literal["cluster", "local"]
T = TypeVar("T")

# Seconds for one API call (connect, read); the watch sets its own, longer, server timeout.
REQUEST_TIMEOUT = (5.0, 30.0)
# 409 (a conflict the caller decides about) and 429 (too many requests) are worth retrying.
RETRYABLE_STATUSES = frozenset({409, 429})
# What one API call can raise: the server's answer, or no answer at all.
API_ERRORS = (ApiException, HTTPError, OSError)


def unvalidated(method: Callable[..., T]) -> Callable[..., T]:
    """A method of the client's generated API classes, without its argument validation.

    Each of them validates every argument with pydantic before building the request, which
    on a Pod body costs about as much as the round trip to a local node (1.6 of 3.4 ms).
    execmesh passes its own manifests, which the API server validates in any case; the
    request is built and sent by the same client code.
    """
    raw = getattr(method, "raw_function", None)  # what pydantic's validate_call wraps
    owner = getattr(method, "__self__", None)
    if raw is None or owner is None:
        return method
    return cast(Callable[..., T], functools.partial(raw, owner))


def call_unread(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Make an API call whose answer is not needed, without decoding it into models.

    The client turns the object a create or delete returns into its models, which costs
    more than the call itself; errors are raised just the same.
    """
    response = unvalidated(call)(
        *args, _request_timeout=REQUEST_TIMEOUT, _preload_content=False, **kwargs
    )
    response.drain_conn()
    response.release_conn()


@dataclass(frozen=True)
class KubeClients:
    core: client.CoreV1Api
    networking: client.NetworkingV1Api
    namespace: str
    backend: Backend


def build_clients(settings: Settings) -> KubeClients:
    backend = pod_backend(settings)
    if backend == "local":
        return clients_for_url(settings.local_config().node_url, settings.pod_namespace)
    configuration = client.Configuration()
    try:
        if settings.kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration
            )
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except ConfigException as error:
        raise ConfigError(f"no usable cluster configuration: {error}") from error
    return _clients(configuration, settings.pod_namespace, "cluster")


def clients_for_url(url: str, namespace: str) -> KubeClients:
    """Clients for a local node (or any API server needing no credentials) at ``url``."""
    configuration = client.Configuration()
    configuration.host = url.rstrip("/")
    return _clients(configuration, namespace, "local")


def pod_backend(settings: Settings) -> Backend:
    if settings.pod_backend not in ("cluster", "local"):
        raise ConfigError(
            f"EXECMESH_POD_BACKEND must be 'cluster' or 'local', not {settings.pod_backend!r}"
        )
    return cast(Backend, settings.pod_backend)


def _clients(configuration: client.Configuration, namespace: str, backend: Backend) -> KubeClients:
    api = client.ApiClient(configuration)
    log.info("pod API: %s backend at %s, namespace %s", backend, configuration.host, namespace)
    return KubeClients(
        core=client.CoreV1Api(api),
        networking=client.NetworkingV1Api(api),
        namespace=namespace,
        backend=backend,
    )


class ApiRefused(PermanentError):
    """The API server refused a request for good (a 4xx other than 409 and 429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(error: ApiException) -> int:
    return int(error.status or 0)


def translate(error: Exception, doing: str) -> ExecmeshError:
    """The execmesh error an API failure stands for: a refusal is permanent, the rest is not."""
    if isinstance(error, ApiException):
        status = status_of(error)
        if 400 <= status < 500 and status not in RETRYABLE_STATUSES:
            return ApiRefused(status, f"{doing}: API refused ({status}): {_reason(error)}")
        return TransientError(f"{doing}: API answered {status}: {_reason(error)}")
    return TransientError(f"{doing}: API unreachable: {error!r}")


def _reason(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "")
        return str(body.get("message") or error.reason)[:1000]
    except (ValueError, AttributeError):
        return str(error.reason)
