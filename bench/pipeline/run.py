"""bench/pipeline: the whole pipeline against the bare local-node run, measured in the same run.

    .venv/bin/python bench/pipeline/run.py [--runs N] [--burst N] [--concurrency C] [--json F]

End-to-end latency: ``print(1)`` in Python from the execution.requested POST to the broker
until result.stored reaches a sink of our own (a Trigger on result.stored, as any subscriber
would get it). Bare: the same pod (ConfigMap + Pod from the manifest builder) created with
the official kubernetes client on the same local node, one shared watch to its end, log read.
The two are interleaved, one of each per round, so drift on a shared machine hits both.

Where the time goes: the event times the replay recorder stored (each function stamps the
events it emits), so each segment is one broker hop plus the handling of the function at its
end; one broker hop alone is measured in the same run with a probe event to the same sink.

Saturation: ``--burst`` executions submitted at once (global limit ``--concurrency``), timed
from the first POST to the last result.stored; bare: the same number of pods with as many
workers as the concurrency. The burst's own segments show where an admission slot is held
(its first segment includes the wait for a slot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, watch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from execmesh.events import ExecutionRequested, ExecutionSpec  # noqa: E402
from execmesh.kube.client import call_unread, unvalidated  # noqa: E402
from execmesh.mesh.sender import Emitter, HttpSender  # noqa: E402
from execmesh.pods import manifest  # noqa: E402
from execmesh.pods.report import parse_pod_report  # noqa: E402
from execmesh.pods.runtimes import available  # noqa: E402
from tests.e2e.mesh import Mesh, start_mesh  # noqa: E402

PYTHON = next(r for r in available("local") if r.language == "python")
SCRIPT = "print(1)\n"
BARE_NAMESPACE = "bench-bare"
PORT_OFFSET = 11500
REDIS_DB = 13
PROBE_TYPE = "io.execmesh.bench.probe"
SINK_TRIGGER = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: bench-sink
  namespace: execmesh
spec:
  broker: default
  filters:
  - any:
    - exact:
        type: io.execmesh.result.stored
    - exact:
        type: {probe}
  subscriber:
    uri: http://127.0.0.1:{port}/
"""
# (segment, event type at its start, event type at its end) along one execution's path.
SEGMENTS = (
    ("requested -> accepted (hop + coordinator)", "requested", "io.execmesh.execution.accepted"),
    (
        "accepted -> pod.create_requested (hop + saga)",
        "io.execmesh.execution.accepted",
        "io.execmesh.pod.create_requested",
    ),
    (
        "create_requested -> pod.created (hop + k8s_worker: ConfigMap + Pod)",
        "io.execmesh.pod.create_requested",
        "io.execmesh.pod.created",
    ),
    (
        "pod.created -> execution.completed (pod runs, pod_monitor sees it, reads log)",
        "io.execmesh.pod.created",
        "io.execmesh.execution.completed",
    ),
    (
        "completed -> result.stored (hop + result_processor)",
        "io.execmesh.execution.completed",
        "io.execmesh.result.stored",
    ),
    ("result.stored -> sink (hop)", "io.execmesh.result.stored", "sink"),
)


class Sink:
    """The Trigger's subscriber: wakes whoever waits for an execution's result.stored."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as a Knative Service answers: HTTP/1.0 cost the last hop a new
            # connection and a new thread per delivery (about 1 ms).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived = time.time()
                self.rfile.read(int(self.headers.get("content-length") or 0))
                key = self.headers.get("ce-subject") or self.headers.get("ce-id") or ""
                sink.arrive(key, arrived)
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def expect(self, key: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def arrive(self, key: str, at: float) -> None:
        with self._lock:
            self.arrivals.setdefault(key, at)
        self.expect(key).set()

    def wait(self, key: str, timeout: float = 60) -> float:
        if not self.expect(key).wait(timeout):
            raise TimeoutError(f"{key}: nothing at the sink after {timeout} s")
        return self.arrivals[key]


class Terminals:
    """One watch over the bare namespace's pods, as the pod_monitor keeps one."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self._done: dict[str, threading.Event] = {}
        self._pods: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._watch = watch.Watch()
        version = core.list_namespaced_pod(BARE_NAMESPACE).metadata.resource_version
        threading.Thread(target=self._follow, args=(version,), daemon=True).start()

    def expect(self, name: str) -> threading.Event:
        with self._lock:
            return self._done.setdefault(name, threading.Event())

    def _follow(self, version: str) -> None:
        with contextlib.suppress(Exception):  # the node going away ends the watch
            for event in self._watch.stream(
                self.core.list_namespaced_pod,
                BARE_NAMESPACE,
                resource_version=version,
                deserialize=False,
            ):
                pod = event["object"]
                if pod["status"].get("phase") in ("Succeeded", "Failed"):
                    self._pods[pod["metadata"]["name"]] = pod
                    self.expect(pod["metadata"]["name"]).set()

    def wait(self, name: str, timeout: float = 60) -> Any:
        if not self.expect(name).wait(timeout):
            raise TimeoutError(f"pod {name} did not finish in {timeout} s")
        return self._pods.pop(name)

    def stop(self) -> None:
        self._watch.stop()


class Bare:
    """The execution's own pod on the node, without the pipeline around it."""

    def __init__(self, node_url: str) -> None:
        self.core = client.CoreV1Api(client.ApiClient(client.Configuration(host=node_url)))
        self.terminals = Terminals(self.core)

    def run(self) -> float:
        spec = manifest.ExecutionSpec(
            execution_id=uuid.uuid4().hex[:16],
            runtime=PYTHON,
            script=SCRIPT,
            limits=manifest.Limits(timeout_seconds=20),
        )
        pod = manifest.build_pod(spec, BARE_NAMESPACE)
        name = pod["metadata"]["name"]
        self.terminals.expect(name)
        started = time.perf_counter()
        # As the k8s_worker calls: the created objects are not decoded.
        configmap = manifest.build_configmap(spec, BARE_NAMESPACE)
        call_unread(self.core.create_namespaced_config_map, BARE_NAMESPACE, configmap)
        call_unread(self.core.create_namespaced_pod, BARE_NAMESPACE, pod)
        finished = self.terminals.wait(name)
        log = unvalidated(self.core.read_namespaced_pod_log)(
            name, BARE_NAMESPACE, _preload_content=False
        )
        elapsed = time.perf_counter() - started
        state = finished["status"]["containerStatuses"][0]["state"]["terminated"]
        report = parse_pod_report(state["message"], log.data)
        assert report.stdout == b"1\n", report
        # The pipeline deletes its pods too (not on the timed path): keep the node as tidy.
        call_unread(self.core.delete_namespaced_pod, name, BARE_NAMESPACE)
        call_unread(self.core.delete_namespaced_config_map, name, BARE_NAMESPACE)
        return elapsed


class Pipeline:
    def __init__(self, mesh: Mesh, sink: Sink) -> None:
        self.mesh = mesh
        self.sink = sink
        self.http = httpx.Client(timeout=10)
        self.sender = HttpSender(mesh.local.broker_url, client=self.http)
        self.emitter = Emitter("bench", self.sender)
        self.posted: dict[str, float] = {}

    def submit(self, user: str = "bench") -> str:
        execution_id = uuid.uuid4().hex[:16]
        request = ExecutionRequested(
            execution_id=execution_id,
            user_id=user,
            spec=ExecutionSpec(language="python", version=PYTHON.version, script=SCRIPT),
            submitted_at=datetime.now(UTC),
        )
        self.sink.expect(execution_id)
        self.posted[execution_id] = time.time()
        self.emitter.emit(request)
        return execution_id

    def run(self) -> float:
        execution_id = self.submit()
        return self.sink.wait(execution_id) - self.posted[execution_id]

    def hop(self) -> float:
        """One broker hop alone: a probe POSTed to the ingress until the sink has it."""
        key = uuid.uuid4().hex
        self.sink.expect(key)
        headers = {
            "ce-specversion": "1.0",
            "ce-id": key,
            "ce-source": "/execmesh/bench",
            "ce-type": PROBE_TYPE,
            "ce-subject": key,
            "content-type": "application/json",
        }
        posted = time.time()
        self.http.post(self.mesh.local.broker_url, content=b"{}", headers=headers)
        return self.sink.wait(key) - posted

    def breakdown(self, ids: list[str]) -> dict[str, dict[str, float]]:
        times: dict[str, dict[str, float]] = {i: {} for i in ids}
        for event in self.mesh.database["events"].find(
            {"execution_id": {"$in": ids}}, {"execution_id": 1, "type": 1, "time": 1}
        ):
            stamp = event["time"].replace(tzinfo=UTC).timestamp()
            times[event["execution_id"]].setdefault(event["type"], stamp)
        for execution_id in ids:
            times[execution_id]["requested"] = self.posted[execution_id]
            times[execution_id]["sink"] = self.sink.arrivals[execution_id]
        segments: dict[str, dict[str, float]] = {}
        for label, start, end in SEGMENTS:
            values = [t[end] - t[start] for t in times.values() if start in t and end in t]
            segments[label] = summary(values)
        return segments


TICK = os.sysconf("SC_CLK_TCK")
SERVICES = {"kafka": b"kafka.Kafka", "ferretdb": b"ferretdb", "redis": b"redis-server"}


def cpu_by_component(mesh: Mesh) -> dict[str, float]:
    """CPU seconds used so far by each mesh process group (children included: a server's
    workers, the node's pods, counted in the node's own once it reaped them) and by the local
    services (shared with anything else running)."""
    groups = {process.pid: name for name, process in mesh.running.items()}
    used: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # After the command: state, ppid, pgrp, ..., utime, stime, then cutime and cstime:
        # what its children used before they exited and were waited for.
        seconds = sum(int(field) for field in fields[11:15]) / TICK
        name = groups.get(int(fields[2]))
        if name is None:
            name = next((n for n, marker in SERVICES.items() if marker in cmdline), None)
        if name is not None:
            used[name] = used.get(name, 0.0) + seconds
    return used


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine spent busy so far, and in all (/proc/stat)."""
    # user nice system idle iowait irq softirq steal, in ticks
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / TICK, sum(ticks) / TICK


def machine_use(
    before: tuple[float, float], after: tuple[float, float], executions: int
) -> dict[str, float]:
    busy, total = (b - a for a, b in zip(before, after, strict=True))
    return {
        "busy": round(busy / total, 2),
        "cpu_ms_per_execution": round(busy * 1000 / executions, 1),
    }


def summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


def saturate(work: Callable[[], object], workers: int, total: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(work) for _ in range(total)]:
            future.result()
    return total / (time.perf_counter() - started)


def pipeline_burst(pipeline: Pipeline, total: int, users: int) -> tuple[float, list[str]]:
    """All at once (four submitters, as a few API replicas), until the last result.stored."""
    started = time.time()
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda n: pipeline.submit(f"user{n % users}"), range(total)))
    last = max(pipeline.sink.wait(i, timeout=600) for i in ids)
    return total / (last - started), ids


@contextlib.contextmanager
def running_mesh(sink: Sink, concurrency: int) -> Iterator[Mesh]:
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    meshes = start_mesh(
        root,
        port_offset=PORT_OFFSET,
        redis_db=REDIS_DB,
        extra_manifests={
            "triggers/bench-sink.yaml": SINK_TRIGGER.format(port=sink.port, probe=PROBE_TYPE)
        },
        EXECMESH_MAX_GLOBAL=str(concurrency),
        EXECMESH_MAX_PER_USER=str(concurrency),
    )
    mesh = next(meshes)
    try:
        yield mesh
    finally:
        with contextlib.suppress(StopIteration):
            next(meshes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40, help="latency samples of each")
    parser.add_argument("--burst", type=int, default=60, help="executions at saturation")
    parser.add_argument("--concurrency", type=int, default=10, help="global admission limit")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg(),
        "runs": args.runs,
        "burst": args.burst,
        "concurrency": args.concurrency,
    }
    sink = Sink()
    with running_mesh(sink, args.concurrency) as mesh:
        bare = Bare(mesh.local.node_url)
        pipeline = Pipeline(mesh, sink)
        for _ in range(5):  # warm the page cache, the connections, the functions
            bare.run()
            pipeline.run()
            pipeline.hop()
        bare_samples, pipeline_samples, hops, ids = [], [], [], []
        for _ in range(args.runs):
            bare_samples.append(bare.run())
            pipeline_samples.append(pipeline.run())
            ids.append(next(reversed(pipeline.posted)))
            hops.append(pipeline.hop())
        time.sleep(2)  # the recorder stores the last events a little after the sink has them
        results["latency"] = {
            "bare node run (create -> watch -> log)": summary(bare_samples),
            "pipeline (requested -> result.stored at a sink)": summary(pipeline_samples),
            "one broker hop (probe -> sink)": summary(hops),
        }
        results["ratio_p50_pipeline_vs_bare"] = round(
            statistics.median(pipeline_samples) / statistics.median(bare_samples), 2
        )
        results["breakdown"] = pipeline.breakdown(ids)
        bare_before = machine_cpu()
        bare_rate = saturate(bare.run, args.concurrency, args.burst)
        bare_after = machine_cpu()
        before, machine_before = cpu_by_component(mesh), machine_cpu()
        pipeline_rate, burst_ids = pipeline_burst(pipeline, args.burst, users=4)
        after, machine_after = cpu_by_component(mesh), machine_cpu()
        # The components miss what the kernel does outside any process, and whatever else
        # runs here: the machine's own count has it all.
        results["machine_at_saturation"] = {
            "bare node runs": machine_use(bare_before, bare_after, args.burst),
            "pipeline executions": machine_use(machine_before, machine_after, args.burst),
        }
        results["cpu_ms_per_execution_at_saturation"] = dict(
            sorted(
                (
                    (name, round((after[name] - before.get(name, 0.0)) * 1000 / args.burst, 1))
                    for name in after
                ),
                key=lambda item: -item[1],
            )
        )
        results["throughput_per_s"] = {
            "bare node runs": round(bare_rate, 2),
            "pipeline executions": round(pipeline_rate, 2),
            "ratio": round(pipeline_rate / bare_rate, 2),
        }
        time.sleep(2)
        # Under the burst, requested -> accepted includes the wait for an admission slot.
        results["breakdown_at_saturation"] = pipeline.breakdown(burst_ids)
        # What the stores hold per execution: each document one write at least.
        executions = mesh.database["executions"].count_documents({})
        results["documents_per_execution"] = {
            name: round(mesh.database[name].count_documents({}) / executions, 1)
            for name in sorted(mesh.database.list_collection_names())
        }
        bare.terminals.stop()
        pipeline.http.close()
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
