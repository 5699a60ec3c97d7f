"""The pod lifecycle on this machine: admit, run in a sandbox, report, clean up, recover.

Each pod is one asyncio task. Its status moves as a kubelet's does: Pending (waiting
ContainerCreating, ErrImagePull/ImagePullBackOff) -> Running -> Succeeded or Failed, with
DeadlineExceeded when activeDeadlineSeconds passes and OOMKilled when the memory cgroup's
OOM killer struck. When a pod ends, every process in its cgroups is killed and the cgroups
are removed; a node that restarts reports pods it was running as Failed (NodeLost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from execmesh.node import netns, podstatus
from execmesh.node.cgroups import Hierarchy, Limits, PodCgroup
from execmesh.node.hostfs import HostLayout, launcher_paths, prepare_host, stage_pod
from execmesh.node.netns import NetnsPool
from execmesh.node.output import LogSink, read_capped, tail
from execmesh.node.podstatus import Outcome, timestamp
from execmesh.node.sandbox import (
    MissingConfigMap,
    NodeLimits,
    SandboxSpec,
    launch_spec,
    parked_argv,
    parked_env,
    sandbox_spec,
)
from execmesh.node.spawn import spawn
from execmesh.node.store import NotFound, Obj, Store

log = logging.getLogger(__name__)

POD = "pods"
CONFIGMAP = "configmaps"
RUNNING_REPORT_DELAY = 0.1
PARKED_LAUNCHERS = 2

ImageCheck = Callable[[str], str | None]  # image -> why it cannot run here, or None


def registry_image_check(image: str) -> str | None:
    from execmesh.pods.runtimes import UnknownRuntime, runtime_for_image

    try:
        runtime_for_image(image)
    except UnknownRuntime as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class KubeletConfig:
    data_dir: Path
    podexec: Path  # the built execmesh-podexec (execmesh/node/podexec.c)
    # Per-pod scratch (staged files, termination-log, launch file); a tmpfs keeps file
    # creation off a pod's start. Default: data_dir/run.
    run_root: Path | None = None
    limits: NodeLimits = field(default_factory=NodeLimits)
    max_running: int = 16
    cgroup_name: str = "execmesh-node"
    image_check: ImageCheck = registry_image_check
    pool_network_namespaces: bool = True
    parked_launchers: int = PARKED_LAUNCHERS


class Deleted(Exception):
    """The pod was deleted while the kubelet waited on it."""


@dataclass(frozen=True)
class _Launcher:
    name: str
    exited: asyncio.Future[int]
    read_fd: int  # the pod's output
    spec_fd: int  # execmesh-podexec, in the built sandbox, reads the pod's launch spec here
    cgroup: PodCgroup
    network: int | None
    slot_dir: Path  # its scratch on the host: the pod's staged files and termination-log


@dataclass
class _Handle:
    task: asyncio.Task[None]
    deleting: asyncio.Event
    grace_seconds: float = 0.0
    executing: bool = False  # from the cgroup's creation on: the task must end by itself
    admitted: float = field(default_factory=time.perf_counter)


class Kubelet:
    def __init__(self, store: Store, config: KubeletConfig) -> None:
        self.store = store
        self.config = config
        self._run_root = config.run_root or config.data_dir / "run"
        self._log_root = config.data_dir / "logs"
        self._etc = config.data_dir / "etc"
        self._cgroups = Hierarchy(config.cgroup_name)
        self._slots = asyncio.Semaphore(config.max_running)
        self._pods: dict[str, _Handle] = {}  # uid -> running task
        self._layout: HostLayout | None = None
        self._netns = NetnsPool() if config.pool_network_namespaces and netns.supported() else None
        self._stopping = False
        self._parked: list[_Launcher] = []

    # -- lifecycle of the node ---------------------------------------------------------

    def start(self) -> None:
        for path in (self._run_root, self._log_root, self._etc):
            path.mkdir(parents=True, exist_ok=True)
        self._layout = prepare_host(self._etc, self.config.podexec)
        self._cgroups.prepare()
        self._recover()
        self._refill()

    async def stop(self) -> None:
        self._stopping = True
        while self._parked:
            self._discard(self._parked.pop())
        handles = list(self._pods.values())
        for handle in handles:
            handle.task.cancel()
        await asyncio.gather(*(h.task for h in handles), return_exceptions=True)
        if self._netns is not None:
            self._netns.close()
        self._cgroups.remove()
        with contextlib.suppress(OSError):  # empty once every pod is cleaned up
            self._run_root.rmdir()

    def _recover(self) -> None:
        started = set()
        for uid, run in self.store.runs():
            started.add(uid)
            group = self._cgroups.restore(run["cgroups"])
            group.kill_all()
            group.remove()
            shutil.rmtree(run["run_dir"], ignore_errors=True)
            self.store.drop_run(uid)
        for group in self._cgroups.leftovers():  # made before a crash let us record them
            group.kill_all()
            group.remove()
        for pod in self.store.list_objects(POD):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self._forget(pod)
            elif podstatus.is_terminal(pod):
                continue
            elif meta["uid"] in started:
                self._finish_if_present(pod, podstatus.node_lost(pod, timestamp()))
            else:
                self.admit(pod)

    # -- the API's entry points ----------------------------------------------------------

    def admit(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        handle = _Handle(asyncio.get_running_loop().create_task(self._run(pod)), asyncio.Event())
        self._pods[uid] = handle
        handle.task.add_done_callback(lambda _: self._pods.pop(uid, None))

    def delete(self, namespace: str, name: str, grace_seconds: float | None) -> Obj:
        pod = self.store.get(POD, namespace, name)
        handle = self._pods.get(pod["metadata"]["uid"])
        if handle is not None and not handle.executing:
            handle.task.cancel()  # nothing acquired yet: no process, cgroup or namespace
        if handle is None or not handle.executing or podstatus.is_terminal(pod):
            return self._forget(pod)  # a finished pod's task only has cleanup left
        grace = grace_seconds
        if grace is None:
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        handle.grace_seconds = max(0.0, grace)
        if handle.deleting.is_set():
            return pod

        def mark(obj: Obj) -> None:
            obj["metadata"]["deletionTimestamp"] = timestamp()
            obj["metadata"]["deletionGracePeriodSeconds"] = int(handle.grace_seconds)

        pod = self.store.update(POD, namespace, name, mark)
        handle.deleting.set()
        return pod

    def log_path(self, pod: Obj) -> Path:
        meta = pod["metadata"]
        return self._log_root / f"{meta['namespace']}_{meta['name']}_{meta['uid']}.log"

    # -- one pod -------------------------------------------------------------------------

    async def _run(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        handle = self._pods[uid]
        started = time.monotonic()
        deadline = pod["spec"].get("activeDeadlineSeconds")
        expires = None if deadline is None else started + float(deadline)
        try:
            spec = await self._prepare(pod, expires, handle)
            if spec is None:
                return
            async with self._slots:
                if handle.deleting.is_set():
                    raise Deleted
                if expires is not None and time.monotonic() >= expires:
                    self._finish_if_present(pod, podstatus.deadline_exceeded(pod, timestamp()))
                    return
                await self._execute(pod, spec, expires, handle)
        except Deleted:
            self._forget_if_present(meta["namespace"], meta["name"])
        except asyncio.CancelledError:
            if self._stopping:
                self._finish_if_present(pod, podstatus.node_shutdown(pod, timestamp()))
            raise
        except Exception as exc:
            log.exception("pod %s/%s failed on the node", meta["namespace"], meta["name"])
            self._finish_if_present(pod, podstatus.start_error(str(exc), timestamp()))

    async def _prepare(
        self, pod: Obj, expires: float | None, handle: _Handle
    ) -> SandboxSpec | None:
        """Wait for the image and the ConfigMaps, as a kubelet waits to pull and mount."""
        meta = pod["metadata"]
        image = pod["spec"]["containers"][0].get("image", "")
        problem = self.config.image_check(image)
        pulls = 0
        while True:
            if problem is None:
                try:
                    return sandbox_spec(pod, self._configmaps(pod), self.config.limits)
                except MissingConfigMap as exc:
                    reason, message = "ContainerCreating", str(exc)
            else:
                reason = "ErrImagePull" if pulls % 2 == 0 else "ImagePullBackOff"
                message = f'Failed to pull image "{image}": {problem}'
                pulls += 1
            current = self.store.find(POD, meta["namespace"], meta["name"])
            if current is None:
                return None
            waiting = current["status"]["containerStatuses"][0]["state"].get("waiting", {})
            if waiting.get("reason") != reason or waiting.get("message") != message:
                self._set_status(current, podstatus.waiting(current, reason, message))
            wait = 0.1 if problem is None else 1.0
            if expires is not None and time.monotonic() + wait >= expires:
                await self._sleep_or_delete(handle, max(0.0, expires - time.monotonic()))
                self._finish_if_present(pod, podstatus.deadline_exceeded(pod, timestamp()))
                return None
            await self._sleep_or_delete(handle, wait)

    @staticmethod
    async def _sleep_or_delete(handle: _Handle, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(handle.deleting.wait(), seconds)
        if handle.deleting.is_set():
            raise Deleted

    def _configmaps(self, pod: Obj) -> dict[str, Obj]:
        """The ConfigMaps the pod's volumes name, those that exist."""
        namespace = pod["metadata"]["namespace"]
        found = {}
        for volume in pod["spec"].get("volumes") or []:
            name = (volume.get("configMap") or {}).get("name")
            if name and (configmap := self.store.find(CONFIGMAP, namespace, name)) is not None:
                found[name] = configmap
        return found

    async def _execute(
        self, pod: Obj, spec: SandboxSpec, expires: float | None, handle: _Handle
    ) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        handle.executing = True
        launcher = self._take_launcher()
        cgroup, run_dir = launcher.cgroup, launcher.slot_dir
        try:
            self._cgroups.apply(cgroup, Limits(spec.memory_bytes, spec.cpu_millicores, spec.pids))
            runs = {"cgroups": {c: str(p) for c, p in cgroup.dirs.items()}, "run_dir": str(run_dir)}
            self.store.save_run(uid, runs)
            self.store.drop_run(launcher.name)
            termination = stage_pod(spec, run_dir)
        except BaseException:
            # Its bubblewrap would wait for a spec forever, holding a network namespace.
            self._discard(launcher)
            self.store.drop_run(uid)
            raise
        try:
            outcome = await self._supervise(pod, spec, termination, launcher, expires, handle)
            self._finish_if_present(pod, outcome)
            if handle.deleting.is_set():
                self._forget_if_present(meta["namespace"], meta["name"])
        finally:
            all_gone = await asyncio.to_thread(_clean_up, cgroup, run_dir)
            self.store.drop_run(uid)
            self._return_network(launcher.network, all_gone)
            self._refill()

    # -- parked launchers ------------------------------------------------------------------

    def _park(self) -> _Launcher:
        """Start a launcher in fresh cgroups (and a pooled network namespace) that builds
        its sandbox and waits there for a pod."""
        assert self._layout is not None, "start() prepares the host layout"
        name = f"slot-{uuid.uuid4().hex[:16]}"
        slot_dir = self._run_root / name
        cgroup = self._cgroups.create(name, Limits(None, None, self.config.limits.pids))
        self.store.save_run(
            name,
            {"cgroups": {c: str(p) for c, p in cgroup.dirs.items()}, "run_dir": str(slot_dir)},
        )
        network = None if self._netns is None else self._netns.acquire()
        host = launcher_paths(self._layout, slot_dir, cgroup.sandbox_mounts(), network is None)
        argv = parked_argv(cgroup.procs_files, host)
        env = parked_env(self.config.limits.nofile)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        spec_read, spec_write = os.pipe2(os.O_CLOEXEC)
        try:
            if self._netns is None or network is None:
                _, exited = spawn(argv, env, write_fd, spec_read)
            else:
                with self._netns.entered(network):
                    _, exited = spawn(argv, env, write_fd, spec_read)
        finally:
            os.close(write_fd)
            os.close(spec_read)
        return _Launcher(name, exited, read_fd, spec_write, cgroup, network, slot_dir)

    def _take_launcher(self) -> _Launcher:
        while self._parked:
            launcher = self._parked.pop()
            if not launcher.exited.done():
                asyncio.get_running_loop().call_soon(self._refill)
                return launcher
            self._discard(launcher)
        return self._park()

    def _refill(self) -> None:
        while not self._stopping and len(self._parked) < self.config.parked_launchers:
            try:
                self._parked.append(self._park())
            except OSError:
                log.exception("cannot park a launcher; pods will start without one")
                return

    def _discard(self, launcher: _Launcher) -> None:
        with contextlib.suppress(OSError):
            os.close(launcher.spec_fd)
        with contextlib.suppress(OSError):
            os.close(launcher.read_fd)
        all_gone = launcher.cgroup.kill_all()
        launcher.cgroup.remove()
        shutil.rmtree(launcher.slot_dir, ignore_errors=True)
        self.store.drop_run(launcher.name)
        self._return_network(launcher.network, all_gone)

    def _return_network(self, network: int | None, all_gone: bool) -> None:
        if self._netns is not None and network is not None:
            # Lent again only when nothing of the last pod can still be in it.
            (self._netns.release if all_gone else self._netns.discard)(network)

    async def _supervise(
        self,
        pod: Obj,
        spec: SandboxSpec,
        termination: Path,
        launcher: _Launcher,
        expires: float | None,
        handle: _Handle,
    ) -> Outcome:
        begun = time.perf_counter()
        cgroup, exited = launcher.cgroup, launcher.exited
        try:
            # The sandbox is built; nothing of the pod runs before its spec is complete.
            payload = memoryview(launch_spec(spec))
            while payload:
                payload = payload[os.write(launcher.spec_fd, payload) :]
        finally:
            os.close(launcher.spec_fd)
        spawned = time.perf_counter()
        # Created once the pod is on its way: the output waits in the pipe meanwhile.
        sink = LogSink(self.log_path(pod), spec.log_bytes)
        drained = sink.follow(launcher.read_fd)
        started_at = timestamp()
        # A kubelet notices a started container at its next relist (up to a second later), so
        # one that is done within RUNNING_REPORT_DELAY goes from Pending straight to its
        # terminal status: no Running write, and no pod.running for the pipeline to handle.
        report_running = asyncio.get_running_loop().call_later(
            RUNNING_REPORT_DELAY,
            self._set_status_if_present,
            pod,
            lambda current: podstatus.running(current, started_at),
        )
        exited.add_done_callback(lambda _: report_running.cancel())
        pod_reason, killed_by = "", None
        deleting = asyncio.ensure_future(handle.deleting.wait())
        timeout = None if expires is None else max(0.0, expires - time.monotonic())
        try:
            waiters: set[asyncio.Future[Any]] = {exited, deleting}
            await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
            if deleting.done() and not exited.done():
                await self._terminate(cgroup, exited, handle.grace_seconds)
                killed_by = signal.SIGKILL if not exited.done() else None
            elif not exited.done():
                pod_reason, killed_by = "DeadlineExceeded", signal.SIGKILL
            if cgroup.pids():  # leftovers: bubblewrap's init normally took them down with it
                await asyncio.to_thread(cgroup.kill_all)
            exit_code = await exited
        finally:
            deleting.cancel()
            if not exited.done():
                await asyncio.to_thread(cgroup.kill_all)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained, 2.0)
        sink.close()
        ended = time.perf_counter()
        outcome = self._outcome(
            spec, termination, cgroup, sink, exit_code, started_at, pod_reason, killed_by
        )
        log.debug(
            "pod %s: prepare %.1f ms, spawn %.1f ms, run %.1f ms, report %.1f ms",
            pod["metadata"]["name"],
            (begun - handle.admitted) * 1000,
            (spawned - begun) * 1000,
            (ended - spawned) * 1000,
            (time.perf_counter() - ended) * 1000,
        )
        return outcome

    @staticmethod
    async def _terminate(cgroup: PodCgroup, exited: asyncio.Future[int], grace: float) -> None:
        """SIGTERM the pod's own processes (not bubblewrap's root init), then SIGKILL."""
        if grace > 0:
            for pid in await asyncio.to_thread(cgroup.pids):
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{pid}").st_uid != 0:
                        os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), grace)
        await asyncio.to_thread(cgroup.kill_all)

    def _outcome(
        self,
        spec: SandboxSpec,
        termination: Path,
        cgroup: PodCgroup,
        sink: LogSink,
        exit_code: int,
        started_at: str,
        pod_reason: str,
        killed_by: int | None,
    ) -> Outcome:
        message = read_capped(termination, podstatus.MESSAGE_BYTES)
        if not message and spec.fallback_to_logs and exit_code != 0:
            message = tail(sink.path, 2048)
        reason = ""
        if exit_code != 0 and cgroup.oom_kills() > 0:
            reason = "OOMKilled"
        if killed_by is not None:
            exit_code = 128 + killed_by
        return Outcome(
            exit_code=exit_code,
            started_at=started_at,
            finished_at=timestamp(),
            reason=reason,
            signal=killed_by,
            message=message,
            pod_reason=pod_reason,
            pod_message=podstatus.DEADLINE_MESSAGE if pod_reason == "DeadlineExceeded" else "",
            log_truncated=sink.truncated,
        )

    # -- store writes --------------------------------------------------------------------

    def _set_status(self, pod: Obj, status: Obj) -> None:
        self._set_status_if_present(pod, lambda _: status)

    def _set_status_if_present(self, pod: Obj, make: Callable[[Obj], Obj]) -> None:
        meta = pod["metadata"]

        def change(current: Obj) -> None:
            current["status"] = make(current)

        with contextlib.suppress(NotFound):
            self.store.update(POD, meta["namespace"], meta["name"], change)

    def _finish_if_present(self, pod: Obj, outcome: Outcome) -> None:
        self._set_status_if_present(pod, lambda current: podstatus.terminated(current, outcome))

    def _forget_if_present(self, namespace: str, name: str) -> None:
        pod = self.store.find(POD, namespace, name)
        if pod is not None:
            self._forget(pod)

    def _forget(self, pod: Obj) -> Obj:
        meta = pod["metadata"]
        with contextlib.suppress(FileNotFoundError):
            self.log_path(pod).unlink()
        return self.store.delete(POD, meta["namespace"], meta["name"])


def _clean_up(cgroup: PodCgroup, run_dir: Path) -> bool:
    all_gone = cgroup.kill_all()
    cgroup.remove()
    shutil.rmtree(run_dir, ignore_errors=True)
    return all_gone
