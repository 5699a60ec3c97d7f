"""The pod monitor: watches executor pods and tells the mesh what became of them.

It lists the executor pods, then watches from the list's resourceVersion, resuming each watch
where the last one stopped and relisting when the API answers 410 Gone. A running pod becomes
pod.running; a finished one has its log read, its large output stored (claim check), its
terminal event emitted and is then deleted. Event ids derive from the pod uid and the event
type, so whatever a restarted monitor re-emits is recognisably the same event: a pod is only
deleted after its events were delivered, so a restart can repeat an event but never lose one.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from execmesh.errors import ExecmeshError
from execmesh.events import Payload
from execmesh.kube.client import (
    API_ERRORS,
    REQUEST_TIMEOUT,
    KubeClients,
    build_clients,
    call_unread,
    status_of,
    translate,
    unvalidated,
)
from execmesh.kube.mapping import (
    PodEvent,
    PodState,
    map_pod,
    read_pod,
    with_refs,
)
from execmesh.mesh.sender import Emitter
from execmesh.mongo import connect
from execmesh.pods.manifest import EXECUTOR_SELECTOR
from execmesh.results.outputs import MongoOutputStore, OutputStore
from execmesh.settings import Settings

log = logging.getLogger(__name__)

COMPONENT = "pod-monitor"
WATCH_TIMEOUT_SECONDS = 30
# A full relist now and then catches anything a watch or a failed task let slip.
RESYNC_SECONDS = 300.0
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Pods remembered as already reported, so a burst of MODIFIED events does no repeated work.
REMEMBERED_PODS = 10_000


class PodMonitor:
    def __init__(
        self,
        clients: KubeClients,
        emitter: Emitter,
        outputs: OutputStore,
        *,
        selector: str = EXECUTOR_SELECTOR,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        resync_seconds: float = RESYNC_SECONDS,
        workers: int = 8,
    ) -> None:
        self._core = clients.core
        self._namespace = clients.namespace
        self._emitter = emitter
        self._outputs = outputs
        self._selector = selector
        self._watch_timeout = watch_timeout_seconds
        self._resync_seconds = resync_seconds
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pod-monitor")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # The newest state of each pod with work queued or under way: one task per pod.
        self._latest: dict[str, PodState] = {}
        self._announced = _RecentSet(REMEMBERED_PODS)
        self._finished = _RecentSet(REMEMBERED_PODS)
        self.resource_version = ""

    def run(self) -> None:
        """List, then watch, until ``stop``; a failure only delays the next attempt."""
        failures = 0
        listed_at = 0.0
        while not self._stop.is_set():
            try:
                if not self.resource_version or time.monotonic() - listed_at > self._resync_seconds:
                    self.relist()
                    listed_at = time.monotonic()
                self.watch_once()
                failures = 0
            except ExecmeshError as error:
                delay = _delay(failures)
                failures += 1
                log.warning("pod API: %s; retrying in %.1fs", error, delay)
                self._stop.wait(delay)
            except Exception:
                # The process's last line of defence: a monitor that stops watching loses
                # every result from then on, so it relists and carries on instead.
                log.exception("pod watch failed unexpectedly; relisting")
                self.resource_version = ""
                self._stop.wait(_delay(failures))
                failures += 1

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True)

    def relist(self) -> None:
        try:
            # Raw JSON: the mapping reads the API's own shapes, and it is cheaper.
            response: Any = self._core.list_namespaced_pod(
                self._namespace,
                label_selector=self._selector,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            pod_list = json.loads(response.data)
        except API_ERRORS as error:
            raise translate(error, "list executor pods") from error
        items = pod_list.get("items") or []
        for pod in items:
            self.observe(pod)
        self.resource_version = str((pod_list.get("metadata") or {}).get("resourceVersion", ""))
        log.info("listed %d executor pods at version %s", len(items), self.resource_version)

    def watch_once(self) -> None:
        """One watch from the last version; after a 410 Gone the next round relists."""
        # "object" keeps each pod the JSON dict it came as: the mapping reads those shapes, and
        # building a V1Pod per event would cost more than everything else the monitor does.
        watcher = watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
        try:
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                self._core.list_namespaced_pod,
                self._namespace,
                label_selector=self._selector,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _request_timeout=(REQUEST_TIMEOUT[0], self._watch_timeout + 10),
            ):
                self._on_watch_event(event["type"], event["raw_object"])
                if self._stop.is_set():
                    watcher.stop()  # type: ignore[no-untyped-call]
        except ApiException as error:
            if status_of(error) == 410:
                log.info("watch version %s is gone; relisting", self.resource_version)
                self.resource_version = ""
                return
            raise translate(error, "watch executor pods") from error
        except API_ERRORS as error:
            raise translate(error, "watch executor pods") from error

    def _on_watch_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.observe(pod)
        version = (pod.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)

    def observe(self, pod: Mapping[str, Any]) -> None:
        """Take note of the latest state of one pod; the work happens on the pool."""
        state = read_pod(pod)
        if self._stop.is_set():
            return
        # A pod being deleted was given up on purpose (cancelled, or already reported).
        if state.deleting or state.uid in self._finished:
            return
        if not state.finished and (not state.container.running or state.uid in self._announced):
            return
        with self._lock:
            queued = state.uid in self._latest
            self._latest[state.uid] = state
        if not queued:
            self._pool.submit(self._work_on, state.uid)

    def _work_on(self, uid: str) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                state = self._latest[uid]
            try:
                self._finish(state) if state.finished else self._announce(state)
            except ExecmeshError as error:
                delay = _delay(failures)
                failures += 1
                log.warning(
                    "pod %s (%s): %s; retrying in %.1fs",
                    state.name,
                    state.execution_id,
                    error,
                    delay,
                )
                self._stop.wait(delay)
                continue
            except Exception:
                # A bug, not an outage: leave the pod for the next resync rather than spin.
                log.exception("pod %s (%s): unexpected failure", state.name, state.execution_id)
            with self._lock:
                if self._latest[uid] is state or self._stop.is_set():
                    del self._latest[uid]
                    return

    def _announce(self, state: PodState) -> None:
        self._emit_all(map_pod(state), state)
        self._announced.add(state.uid)

    def _finish(self, state: PodState) -> None:
        pod_log = self._read_log(state) if state.needs_log else b""
        if pod_log is None:
            log.warning("pod %s vanished before its log was read", state.name)
        else:
            self._emit_all(map_pod(state, pod_log), state)
            self._delete(state)
        self._finished.add(state.uid)

    def _emit_all(self, events: Iterable[PodEvent], state: PodState) -> None:
        for event in events:
            payload = self._claim_check(event, state)
            self._emitter.emit(payload, cause=event.cause)
            log.info("%s %s (pod %s)", payload.TYPE, state.execution_id, state.name)

    def _claim_check(self, event: PodEvent, state: PodState) -> Payload:
        if not event.spilled:
            return event.payload
        refs = {
            stream: self._outputs.store_output(state.execution_id, stream, data)
            for stream, data in event.spilled.items()
        }
        return with_refs(event.payload, refs)

    def _read_log(self, state: PodState) -> bytes | None:
        doing = f"read the log of pod {state.name}"
        try:
            # Raw bytes: decoded as UTF-8, any other bytes the program printed would be lost.
            response: Any = unvalidated(self._core.read_namespaced_pod_log)(
                state.name,
                state.namespace or self._namespace,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            data: bytes = response.data
            return data
        except ApiException as error:
            if status_of(error) == 404:
                return None
            raise translate(error, doing) from error
        except API_ERRORS as error:
            raise translate(error, doing) from error

    def _delete(self, state: PodState) -> None:
        doing = f"delete pod {state.name}"
        try:
            call_unread(
                self._core.delete_namespaced_pod,
                state.name,
                state.namespace or self._namespace,
                grace_period_seconds=0,
            )
        except ApiException as error:
            if status_of(error) != 404:
                raise translate(error, doing) from error
        except API_ERRORS as error:
            raise translate(error, doing) from error


def _delay(failures: int) -> float:
    return RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]


class _RecentSet:
    """A set that forgets its oldest members past ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, item: str) -> None:
        with self._lock:
            self._items[item] = None
            self._items.move_to_end(item)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return item in self._items


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="execmesh pod-monitor", description=__doc__)
    parser.add_argument("--watch-timeout", type=int, default=WATCH_TIMEOUT_SECONDS)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s pod-monitor %(levelname)s %(message)s"
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    settings = Settings.from_env()
    if not settings.k_sink:
        log.error("K_SINK is not set: a ContainerSource is given its sink there")
        return 2
    outputs = MongoOutputStore(connect(settings))
    monitor = PodMonitor(
        build_clients(settings),
        Emitter.from_settings(COMPONENT, settings),
        outputs,
        watch_timeout_seconds=args.watch_timeout,
        workers=args.workers,
    )
    # The watch blocks in a socket read; in its own thread it cannot delay the shutdown.
    watcher = threading.Thread(target=monitor.run, name="pod-watch", daemon=True)
    watcher.start()
    log.info(
        "watching %s pods in %s, emitting to %s",
        EXECUTOR_SELECTOR,
        settings.pod_namespace,
        settings.k_sink,
    )
    stopping.wait()
    log.info("stopping: finishing the pods under way")
    monitor.close()
    return 0
