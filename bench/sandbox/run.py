"""bench/sandbox: what the local node's sandbox costs, against a bare interpreter, same run.

Latency of ``print(1)`` in Python from pod create to terminal status with the log read,
through a real ``execmesh node`` and the official kubernetes client (one shared watch, as
the pod_monitor has), against ``python3 -c 'print(1)'`` spawned bare. Then where the time
goes (the sandbox launched without the node, with and without its cgroups; the client's
calls), and pods per second with both cores busy.

Usage: ``.venv/bin/python bench/sandbox/run.py [--runs N] [--json out.json]`` (as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, watch

from execmesh.kube.client import call_unread, unvalidated
from execmesh.node import cgroups
from execmesh.node.hostfs import launcher_paths, prepare_host, stage_pod
from execmesh.node.netns import NetnsPool
from execmesh.node.sandbox import (
    HostPaths,
    NodeLimits,
    launch_spec,
    parked_argv,
    parked_env,
    sandbox_argv,
    sandbox_spec,
)
from execmesh.pods.manifest import ExecutionSpec, Limits, build_configmap, build_pod
from execmesh.pods.report import parse_pod_report
from execmesh.pods.runtimes import available
from execmesh.settings import Settings

NAMESPACE = "bench"
PYTHON = next(r for r in available("local") if r.language == "python")
BARE = [PYTHON.run_command[0], "-c", "print(1)"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_node(
    max_running: int, log_level: str = "warning", log: Path | None = None
) -> Iterator[str]:
    data = Path(tempfile.mkdtemp(prefix="bench-node-"))
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "execmesh.node.main", "--port", str(port)),
            *("--data-dir", str(data), "--max-running", str(max_running)),
            *("--log-level", log_level),
        ],
        stderr=None if log is None else log.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(15)
        shutil.rmtree(data, ignore_errors=True)


class Terminals:
    """One watch over every pod, as the pod_monitor keeps: terminal pods wake their waiter."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self._events: dict[str, threading.Event] = {}
        self._pods: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._watch = watch.Watch()
        version = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()

    def expect(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def _run(self, version: str) -> None:
        with contextlib.suppress(Exception):  # the node going away ends the watch
            self._follow(version)

    def _follow(self, version: str) -> None:
        # Plain dicts: the client's model deserialisation would cost more than the node.
        for event in self._watch.stream(
            self.core.list_namespaced_pod, NAMESPACE, resource_version=version, deserialize=False
        ):
            pod = event["object"]
            if pod["status"].get("phase") in ("Succeeded", "Failed"):
                self._pods[pod["metadata"]["name"]] = pod
                self.expect(pod["metadata"]["name"]).set()

    def wait(self, name: str, timeout: float = 30) -> Any:
        if not self.expect(name).wait(timeout):
            raise TimeoutError(f"pod {name} did not finish in {timeout} s")
        return self._pods.pop(name)

    def stop(self) -> None:
        self._watch.stop()


def direct_pod(name: str) -> dict[str, Any]:
    """print(1) as the pod's own command: the sandbox with nothing else around it."""
    return {
        "metadata": {"name": name, "labels": {"bench": "sandbox"}},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 30,
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
            "containers": [
                {
                    "name": "main",
                    "image": PYTHON.image,
                    "command": BARE,
                    "resources": {"limits": {"cpu": "1", "memory": "128Mi"}},
                }
            ],
        },
    }


def run_direct(
    core: client.CoreV1Api, terminals: Terminals, timings: dict[str, list[float]]
) -> float:
    name = f"p-{uuid.uuid4().hex[:10]}"
    terminals.expect(name)
    started = time.perf_counter()
    call_unread(core.create_namespaced_pod, NAMESPACE, direct_pod(name))
    created = time.perf_counter()
    pod = terminals.wait(name)
    ended = time.perf_counter()
    log = unvalidated(core.read_namespaced_pod_log)(name, NAMESPACE, _preload_content=False).data
    done = time.perf_counter()
    assert pod["status"]["phase"] == "Succeeded" and log == b"1\n", (pod["status"], log)
    timings["create call"].append(created - started)
    timings["created -> terminal event"].append(ended - created)
    timings["log read"].append(done - ended)
    return done - started


def run_execution(core: client.CoreV1Api, terminals: Terminals) -> float:
    """The real thing: ConfigMap + Pod from the builder, the entry point, the parsed report."""
    spec = ExecutionSpec(
        execution_id=uuid.uuid4().hex[:12],
        runtime=PYTHON,
        script="print(1)\n",
        limits=Limits(timeout_seconds=20),
    )
    pod_body = build_pod(spec, NAMESPACE)
    name = pod_body["metadata"]["name"]
    terminals.expect(name)
    started = time.perf_counter()
    call_unread(core.create_namespaced_config_map, NAMESPACE, build_configmap(spec, NAMESPACE))
    call_unread(core.create_namespaced_pod, NAMESPACE, pod_body)
    pod = terminals.wait(name)
    log = unvalidated(core.read_namespaced_pod_log)(name, NAMESPACE, _preload_content=False).data
    elapsed = time.perf_counter() - started
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    report = parse_pod_report(state["message"], log)
    assert report.stdout == b"1\n", report
    return elapsed


def run_bare() -> float:
    started = time.perf_counter()
    result = subprocess.run(BARE, capture_output=True, check=True)
    assert result.stdout == b"1\n"
    return time.perf_counter() - started


class Sandbox:
    """The node's sandbox launched straight from here: no API, no kubelet, same argv."""

    def __init__(self) -> None:
        pod = direct_pod("bench-sandbox")
        pod["metadata"]["uid"] = "bench"
        self.spec = sandbox_spec(pod, {}, NodeLimits())
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
        self.layout = prepare_host(self.scratch / "etc", Settings.from_env().podexec_path)
        self.hierarchy = cgroups.Hierarchy("execmesh-bench")
        self.hierarchy.prepare()
        self.pool = NetnsPool()
        self.network = self.pool.acquire()

    def close(self) -> None:
        self.pool.discard(self.network)
        self.pool.close()
        self.hierarchy.remove()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _run(self, argv: list[str], spec_fd: int, env: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        with self.pool.entered(self.network):
            result = subprocess.run(
                argv, capture_output=True, check=True, env=env, pass_fds=[spec_fd]
            )
        assert result.stdout == b"1\n"
        return time.perf_counter() - started

    def _launch(self, make_argv: Callable[[HostPaths, int], list[str]], **kwargs: Any) -> float:
        """Build the sandbox from scratch, the pod's spec already waiting in the pipe."""
        slot = self.scratch / "slot"
        host = launcher_paths(self.layout, slot, **kwargs)
        stage_pod(self.spec, slot)
        spec_read, spec_write = os.pipe()
        try:
            os.write(spec_write, launch_spec(self.spec))
            os.close(spec_write)
            env = parked_env(NodeLimits().nofile)
            return self._run(make_argv(host, spec_read), spec_read, env)
        finally:
            os.close(spec_read)
            shutil.rmtree(slot)

    def bwrap_only(self) -> float:
        """bubblewrap + execmesh-podexec + print(1), pooled network namespace, no cgroups."""
        return self._launch(sandbox_argv, cgroup_mounts={}, unshare_net=False)

    def own_netns(self) -> float:
        """The same, with bubblewrap creating a fresh network namespace."""
        return self._launch(sandbox_argv, cgroup_mounts={}, unshare_net=True)

    def with_cgroups(self) -> float:
        """An unparked launcher: cgroups made, joined by the wrapper, rlimits, removed."""
        started = time.perf_counter()
        group = self.hierarchy.create(uuid.uuid4().hex, cgroups.Limits(128 << 20, 1000, 256))
        self._launch(
            lambda host, fd: parked_argv(group.procs_files, host, spec_fd=fd),
            cgroup_mounts=group.sandbox_mounts(),
            unshare_net=False,
        )
        group.kill_all()
        group.remove()
        return time.perf_counter() - started


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def throughput(work: Callable[[], object], workers: int, total: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(work) for _ in range(total)]:
            future.result()
    return total / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": BARE[0],
        "runs": args.runs,
        "load_average_at_start": os.getloadavg(),
    }
    with running_node(max_running=16) as url:
        core = client.CoreV1Api(client.ApiClient(client.Configuration(host=url)))
        terminals = Terminals(core)
        timings: dict[str, list[float]] = {
            "create call": [],
            "created -> terminal event": [],
            "log read": [],
        }
        sandbox = Sandbox()
        series: dict[str, Callable[[], float]] = {
            "bare python3 -c print(1)": run_bare,
            "node: pod print(1), create -> terminal + log": lambda: run_direct(
                core, terminals, timings
            ),
            "sandbox: bubblewrap + podexec, pooled netns": sandbox.bwrap_only,
            "sandbox: bubblewrap + podexec, fresh netns": sandbox.own_netns,
            "sandbox: + cgroups joined by the wrapper (an unparked launcher)": sandbox.with_cgroups,
        }
        for _ in range(10):  # warm the page cache and the connection pool
            for run in series.values():
                run()
        for values in timings.values():
            values.clear()
        samples: dict[str, list[float]] = {name: [] for name in series}
        for _ in range(args.runs):  # interleaved, so drift hits every series alike
            for name, run in series.items():
                samples[name].append(run())
        execution = [run_execution(core, terminals) for _ in range(max(20, args.runs // 4))]
        bare, node = (
            samples["bare python3 -c print(1)"],
            samples["node: pod print(1), create -> terminal + log"],
        )
        results["latency"] = {
            "bare python3 -c print(1)": summary(bare),
            "node: pod print(1), create -> terminal + log": summary(node),
            "node: execution (ConfigMap + Pod, entry point, report)": summary(execution),
        }
        results["breakdown"] = {
            **{name: summary(values) for name, values in samples.items() if "sandbox" in name},
            **{f"client: {k}": summary(v) for k, v in timings.items()},
        }
        results["ratio_p50_node_vs_bare"] = round(
            statistics.median(node) / statistics.median(bare), 2
        )
        total = max(40, args.runs // 2)
        results["throughput_per_s"] = {
            "workers": args.workers,
            "bare python3": round(throughput(run_bare, args.workers, total), 1),
            "node pods print(1)": round(
                throughput(lambda: run_direct(core, terminals, timings), args.workers, total), 1
            ),
            "node executions": round(
                throughput(lambda: run_execution(core, terminals), args.workers, total), 1
            ),
        }
        terminals.stop()
        sandbox.close()
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    print(markdown(results))
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def markdown(results: dict[str, Any]) -> str:
    rows = ["| series | p50 ms | p99 ms | mean ms | n |", "|---|---:|---:|---:|---:|"]
    for section in ("latency", "breakdown"):
        for name, s in results[section].items():
            rows.append(f"| {name} | {s['p50_ms']} | {s['p99_ms']} | {s['mean_ms']} | {s['n']} |")
    rate = results["throughput_per_s"]
    rows += [
        "",
        f"p50 node / bare: **{results['ratio_p50_node_vs_bare']}x**",
        "",
        f"Throughput with {rate['workers']} concurrent submitters (per second): "
        f"bare python3 {rate['bare python3']}, node pods print(1) {rate['node pods print(1)']}, "
        f"node executions {rate['node executions']}.",
        "",
        f"Load average (1, 5, 15 min) at start {results['load_average_at_start']}, "
        f"at end {results['load_average_at_end']}.",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
