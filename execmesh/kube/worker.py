"""The k8s worker's library: an execution's ConfigMap, NetworkPolicy and Pod, made and unmade.

Every step is safe to repeat, because the broker delivers at least once: an object that
already exists (409) was created by an earlier attempt, and one that is already gone (404)
was deleted by one. What the API refuses for good becomes the execution's failure; anything
else is a ``TransientError``, for the broker to retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from execmesh.errors import PermanentError, TransientError
from execmesh.events import (
    ExecutionFailed,
    FailureType,
    PodCreated,
    PodCreateRequested,
    PodDeleted,
    PodDeleteRequested,
)
from execmesh.events import Limits as RequestedLimits
from execmesh.kube.client import (
    API_ERRORS,
    REQUEST_TIMEOUT,
    ApiRefused,
    KubeClients,
    call_unread,
    translate,
)
from execmesh.kube.mapping import MAX_MESSAGE_CHARS
from execmesh.pods import manifest, runtimes

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# How long a delete waits for the pod to be gone; past it the delete is retried as a whole.
TERMINATION_WAIT_SECONDS = 10.0
TERMINATION_POLL_SECONDS = 0.05
Resolve = Callable[[str, str | None, runtimes.Backend], runtimes.Runtime]


class PodWorker:
    def __init__(
        self,
        clients: KubeClients,
        *,
        resolve: Resolve = runtimes.resolve,
        runtime_class_name: str | None = None,
        termination_wait_seconds: float = TERMINATION_WAIT_SECONDS,
    ) -> None:
        self._clients = clients
        self._resolve = resolve
        self._runtime_class_name = runtime_class_name
        self._termination_wait = termination_wait_seconds
        self._lock = threading.Lock()
        self._policed: set[str] = set()

    @property
    def namespace(self) -> str:
        return self._clients.namespace

    def create(self, request: PodCreateRequested) -> PodCreated | ExecutionFailed:
        """Create what the execution needs; a refusal comes back as its failure."""
        namespace = self.namespace
        try:
            spec = self.execution_spec(request)
            configmap = manifest.build_configmap(spec, namespace)
            pod = manifest.build_pod(spec, namespace, self._runtime_class_name)
        except runtimes.UnknownRuntime as error:
            return _failed(request.execution_id, FailureType.IMAGE, str(error))
        except PermanentError as error:
            # Limits or sizes no pod can honour: admission should have refused them.
            return _failed(request.execution_id, FailureType.INTERNAL, str(error))
        core = self._clients.core
        try:
            self.ensure_network_policy(namespace)
            self._create("configmap", core.create_namespaced_config_map, configmap)
            self._create("pod", core.create_namespaced_pod, pod)
        except ApiRefused as error:
            return _failed(request.execution_id, FailureType.API, str(error))
        name = pod["metadata"]["name"]
        log.info("created pod %s/%s for %s", namespace, name, request.execution_id)
        return PodCreated(execution_id=request.execution_id, namespace=namespace, pod_name=name)

    def delete(self, request: PodDeleteRequested) -> PodDeleted:
        """Delete the pod, then its ConfigMap; deleting what is gone is done already."""
        namespace = self.namespace
        name = manifest.resource_name(request.execution_id)
        core = self._clients.core
        self._delete("pod", core.delete_namespaced_pod, name, grace_period_seconds=0)
        # pod.deleted promises the program has stopped, and a deleted pod terminates first.
        self._wait_gone(name)
        self._delete("configmap", core.delete_namespaced_config_map, name)
        log.info("deleted pod %s/%s (%s)", namespace, name, request.reason)
        return PodDeleted(execution_id=request.execution_id, namespace=namespace, pod_name=name)

    def execution_spec(self, request: PodCreateRequested) -> manifest.ExecutionSpec:
        wanted = request.spec
        runtime = self._resolve(wanted.language, wanted.version, self._clients.backend)
        return manifest.ExecutionSpec(
            execution_id=request.execution_id,
            runtime=runtime,
            script=wanted.script,
            stdin=wanted.stdin,
            args=tuple(wanted.args),
            limits=pod_limits(request.limits, runtime.min_tmp_bytes),
        )

    def ensure_network_policy(self, namespace: str) -> None:
        """The namespace's deny-all policy for executors, once per process."""
        with self._lock:
            if namespace in self._policed:
                return
        # The client's signature wants its model; it serialises a JSON dict just the same.
        create: Callable[..., Any] = self._clients.networking.create_namespaced_network_policy
        try:
            create(
                namespace,
                manifest.build_network_policy(namespace),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == 404:
                # The local node serves no NetworkPolicy: its sandbox has no network at all.
                log.info("NetworkPolicy is not served here: nothing to enforce in %s", namespace)
            elif error.status != 409:
                raise translate(error, "create the executors' NetworkPolicy") from error
        except API_ERRORS as error:
            raise translate(error, "create the executors' NetworkPolicy") from error
        with self._lock:
            self._policed.add(namespace)

    def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + self._termination_wait
        while True:
            try:
                self._clients.core.read_namespaced_pod(
                    name, self.namespace, _request_timeout=REQUEST_TIMEOUT
                )
            except ApiException as error:
                if error.status == 404:
                    return
                raise translate(error, f"read pod {name}") from error
            except API_ERRORS as error:
                raise translate(error, f"read pod {name}") from error
            if time.monotonic() > deadline:
                raise TransientError(f"pod {name} is still terminating")
            time.sleep(TERMINATION_POLL_SECONDS)

    def _create(self, kind: str, create: Callable[..., Any], body: dict[str, Any]) -> None:
        try:
            call_unread(create, self.namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise translate(error, f"create {kind} {body['metadata']['name']}") from error
            log.info("%s %s exists already", kind, body["metadata"]["name"])
        except API_ERRORS as error:
            raise translate(error, f"create {kind} {body['metadata']['name']}") from error

    def _delete(self, kind: str, delete: Callable[..., Any], name: str, **options: Any) -> None:
        try:
            call_unread(delete, name, self.namespace, **options)
        except ApiException as error:
            if error.status != 404:
                raise translate(error, f"delete {kind} {name}") from error
        except API_ERRORS as error:
            raise translate(error, f"delete {kind} {name}") from error


def pod_limits(limits: RequestedLimits, min_tmp_bytes: int = 0) -> manifest.Limits:
    """The pod's limits for the limits the coordinator granted; /tmp as the runtime needs."""
    memory = limits.memory_mb * MiB
    defaults = manifest.Limits()
    return manifest.Limits(
        cpu_millicores=limits.cpu_millis,
        memory_bytes=memory,
        timeout_seconds=limits.timeout_seconds,
        output_bytes=limits.output_bytes,
        # /tmp is memory-backed and charged to the pod: it can never exceed the memory limit.
        tmp_bytes=min(max(defaults.tmp_bytes, min_tmp_bytes), memory),
    )


def _failed(execution_id: str, kind: FailureType, message: str) -> ExecutionFailed:
    log.warning("execution %s failed (%s): %s", execution_id, kind.value, message)
    return ExecutionFailed(
        execution_id=execution_id, error_type=kind, message=message[:MAX_MESSAGE_CHARS]
    )
