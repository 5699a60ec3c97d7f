"""Benchmark of the local broker against raw librdkafka, measured in the same run.

    .venv/bin/python bench/mesh/run.py [--events N] [--rate R] [--report PATH]

One hop = an event POSTed to the broker's ingress until the subscriber receives it. The same
run measures raw produce-then-consume with the broker's own Kafka client, librdkafka
(confluent-kafka), configured as the broker configures it: the floor any Kafka-backed broker
stands on; "added per hop" is the broker's latency minus that floor.

Throughput: N events as fast as the load generator can (C keep-alive connections), timed
from the first send to the last delivery. Latency: events paced at R per second, so that the
percentiles measure the path and not a queue.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import confluent_kafka
import httpx
import uvloop
import yaml
from http_tools import Sink, binary_request, read_response
from kafka import KafkaAdminClient

from execmesh.settings import PROJECT_ROOT, Settings

BODY = b'{"execution_id": "bench", "language": "python", "n": 1}'
PARTITIONS = 10
KEYS = 200
CONNECTIONS = 32
RAW = "raw librdkafka"


@dataclass(frozen=True)
class Result:
    name: str
    events_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_event: float | None = None
    ingress_cpu_us_per_event: float | None = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ---------------------------------------------------------------- raw librdkafka


def raw_kafka(bootstrap: str, events: int, rate: float) -> tuple[Result, Result]:
    """librdkafka alone, configured as the broker's: this process produces (acks=all,
    idempotent, no linger), a child process consumes (as in the broker, where the ingress
    process produces and the dispatcher process consumes)."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        {topic: {"num_partitions": PARTITIONS, "replication_factor": 1}}, wait_for_metadata=True
    )
    admin.close()
    paced = int(rate * 4)
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[tuple[int, int]]] = context.Queue()
    ready = context.Event()
    consumer = context.Process(
        target=consume_raw, args=(bootstrap, topic, [events, paced], ready, results)
    )
    consumer.start()
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
        }
    )
    try:
        if not ready.wait(30):
            raise RuntimeError("raw consumer did not start")

        def send(n: int) -> None:
            producer.produce(
                topic,
                BODY,
                f"k-{n % KEYS}".encode(),
                headers=[("sent", str(time.time_ns()).encode())],
            )
            producer.poll(0)  # serve the delivery reports as they come

        start_ns = time.time_ns()
        for n in range(events):
            send(n)
        producer.flush()
        blast = results.get(timeout=120)
        elapsed = (max(received for _, received in blast) - start_ns) / 1e9
        throughput = Result(RAW, events / elapsed, *_lat(blast))
        start = time.perf_counter()
        for n in range(paced):
            _pace(start, n, rate)
            send(n)
        producer.flush()
        latency = Result(f"{RAW}, paced {rate:.0f}/s", rate, *_lat(results.get(timeout=60)))
    finally:
        producer.flush(10)
        consumer.join(10)
        if consumer.is_alive():
            consumer.kill()
    return throughput, latency


def consume_raw(
    bootstrap: str,
    topic: str,
    rounds: list[int],
    ready: EventType,
    results: multiprocessing.Queue[list[tuple[int, int]]],
) -> None:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    # The topic is new: everything in it is the benchmark's.
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    ready.set()
    for expected in rounds:
        received: list[tuple[int, int]] = []
        deadline = time.monotonic() + 120
        while len(received) < expected and time.monotonic() < deadline:
            # consume() alone waits for a whole batch: one record, then what is already there.
            first = consumer.poll(0.05)
            if first is None:
                continue
            batch = [first, *consumer.consume(499, 0)]
            now = time.time_ns()
            received.extend(
                (int(dict(m.headers() or [])["sent"]), now) for m in batch if m.error() is None
            )
        results.put(received)
    consumer.close()


def _pace(start: float, n: int, rate: float) -> None:
    delay = start + n / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _wait(done: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def _lat(pairs: list[tuple[int, int]]) -> tuple[float, float]:
    latencies = [(received - sent) / 1e6 for sent, received in pairs]
    return percentile(latencies, 0.5), percentile(latencies, 0.99)


# ---------------------------------------------------------------- the local broker


class BrokerUnderTest:
    def __init__(self, directory: Path, sink_port: int) -> None:
        self.namespace = f"bench{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        eventing = directory / "eventing"
        eventing.mkdir()
        (eventing / "mesh.yaml").write_text(
            yaml.safe_dump_all(
                [
                    {
                        "apiVersion": "eventing.knative.dev/v1",
                        "kind": "Broker",
                        "metadata": {"name": "default", "namespace": self.namespace},
                        "spec": {},
                    },
                    {
                        "apiVersion": "eventing.knative.dev/v1",
                        "kind": "Trigger",
                        "metadata": {"name": "sink", "namespace": self.namespace},
                        "spec": {
                            "broker": "default",
                            "subscriber": {"uri": f"http://127.0.0.1:{sink_port}/"},
                        },
                    },
                ]
            )
        )
        (directory / "local.yaml").write_text(
            yaml.safe_dump(
                {
                    "namespace": self.namespace,
                    "broker": {"name": "default", "port": self.port},
                    "node": {"port": free_port()},
                    "services": {},
                }
            )
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "execmesh.cli",
                "broker",
                "--eventing-dir",
                str(eventing),
                "--local-config",
                str(directory / "local.yaml"),
                "--log-level",
                "WARNING",
                "--partitions",
                str(PARTITIONS),
            ],
            cwd=PROJECT_ROOT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("broker did not start")

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time of the broker process (dispatchers) and of its ingress processes."""
        ingress = []
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            ingress += [int(pid) for pid in children.read_text().split()]
        return _cpu(self.process.pid), sum(_cpu(pid) for pid in ingress)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def through_broker(events: int, rate: float, connections: int) -> tuple[Result, Result]:
    received: dict[str, tuple[int, int]] = {}
    loop = asyncio.get_running_loop()
    sink_port = free_port()
    server = await loop.create_server(
        lambda: Sink(lambda i, s, r: received.__setitem__(i, (s, r))), "127.0.0.1", sink_port
    )
    with tempfile.TemporaryDirectory() as directory:
        broker = await asyncio.to_thread(BrokerUnderTest, Path(directory), sink_port)
        path = f"/{broker.namespace}/default"
        try:
            await _post_all(broker.port, path, "warm", 200, 8, None)
            await _until(lambda: len(received) >= 200, 30)
            received.clear()
            cpu = broker.cpu_seconds()
            start = time.perf_counter()
            await _post_all(broker.port, path, "t", events, connections, None)
            await _until(lambda: len(received) >= events, 120)
            elapsed = time.perf_counter() - start
            dispatcher_cpu, ingress_cpu = broker.cpu_seconds()
            throughput = Result(
                "local broker",
                len(received) / elapsed,
                *_lat(list(received.values())),
                (dispatcher_cpu + ingress_cpu - sum(cpu)) / events * 1e6,
                (ingress_cpu - cpu[1]) / events * 1e6,
            )
            received.clear()
            paced = int(rate * 4)
            await _post_all(broker.port, path, "p", paced, 16, rate)
            await _until(lambda: len(received) >= paced, 60)
            latency = Result(
                f"local broker, paced {rate:.0f}/s", rate, *_lat(list(received.values()))
            )
        finally:
            await asyncio.to_thread(broker.stop)
            server.close()
    return throughput, latency


async def _post_all(
    port: int, path: str, prefix: str, total: int, connections: int, rate: float | None
) -> None:
    numbers = iter(range(total))
    start = time.perf_counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in numbers:
                if rate is not None:
                    delay = start + n / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                writer.write(
                    binary_request("127.0.0.1", port, path, f"{prefix}-{n}", f"k-{n % KEYS}", BODY)
                )
                status = await read_response(reader)
                if status != 202:
                    raise RuntimeError(f"ingress answered {status}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


async def _until(done: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- report


def report(
    results: list[Result],
    rate: float,
    events: int,
    connections: int,
    load: tuple[float, float],
    trials: int,
) -> str:
    raw, raw_paced, broker, broker_paced = results
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
    lines = [
        "# Local broker benchmark (bench/mesh/run.py)",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"Kafka on 127.0.0.1 (KRaft, single node). "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average (1 min) "
        f"before/after the run: {load[0]:.1f}/{load[1]:.1f} (other work shares the machine).",
        "",
        f"Throughput: {events} events, {connections} connections, 1 trigger, "
        f"{PARTITIONS} partitions, {KEYS} partition keys. "
        f"Latency: paced at {rate:.0f} events/s for 4 s. Best of {trials} run(s), "
        "each path measured in the same run.",
        "",
        "| path | events/s | p50 ms | p99 ms | broker CPU µs/event |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu_cell = f"{r.cpu_us_per_event:.0f}" if r.cpu_us_per_event else ""
        lines.append(
            f"| {r.name} | {r.events_per_second:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {cpu_cell} |"
        )
    lines += [
        "",
        "Added per hop by the broker (paced): "
        f"p50 {broker_paced.p50_ms - raw_paced.p50_ms:+.2f} ms, "
        f"p99 {broker_paced.p99_ms - raw_paced.p99_ms:+.2f} ms.",
        f"Broker throughput: {broker.events_per_second:,.0f} events/s "
        f"({broker.events_per_second / raw.events_per_second:.0%} of {RAW}'s "
        f"{raw.events_per_second:,.0f}).",
    ]
    if broker.cpu_us_per_event and broker.ingress_cpu_us_per_event:
        ingress = broker.ingress_cpu_us_per_event
        dispatcher = broker.cpu_us_per_event - ingress
        lines.append(
            f"Broker CPU per event: {broker.cpu_us_per_event:.0f} µs (ingress process "
            f"{ingress:.0f} µs, dispatcher process {dispatcher:.0f} µs). Each is one Python "
            f"process on a core of its own: CPU alone would cap them at about "
            f"{1e6 / ingress:,.0f} and {1e6 / dispatcher:,.0f} events/s."
        )
    lines += [
        "",
        "Reading the figures: events/s is measured with a closed loop (each connection waits "
        "for its 202), so on a busy machine it follows the CPU share the scheduler gives the "
        "broker's threads, and latency follows the run queue. CPU µs per event does not "
        "depend on the load around it; it is the figure to compare across runs.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--trials", type=int, default=1, help="report the best of N runs")
    parser.add_argument("--report", type=Path, default=Path(__file__).with_name("REPORT.md"))
    args = parser.parse_args()
    bootstrap = Settings.from_env().kafka_bootstrap_servers
    load_before = os.getloadavg()[0]
    # Best of N: on a shared machine the other work only ever slows a trial down.
    raws = [raw_kafka(bootstrap, args.events, args.rate) for _ in range(args.trials)]
    brokers = [
        uvloop.run(through_broker(args.events, args.rate, args.connections))
        for _ in range(args.trials)
    ]
    for trial, (throughput, _) in enumerate(brokers, 1):
        print(f"trial {trial}: broker {throughput.events_per_second:,.0f} events/s")
    raw = max(raws, key=lambda pair: pair[0].events_per_second)
    broker = max(brokers, key=lambda pair: pair[0].events_per_second)
    load = (load_before, os.getloadavg()[0])
    text = report([*raw, *broker], args.rate, args.events, args.connections, load, args.trials)
    print(text)
    args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
