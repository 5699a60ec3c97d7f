"""Benchmark of the API gateway in front of the whole local mesh.

    .venv/bin/python bench/api/run.py [--seconds S] [--report PATH]

Starts its own mesh (tests/e2e/api_client.py: its own ports, database, Redis db, Kafka
topic), one user and key per client, rate limits and quotas out of the way. For 1, 10 and 50
concurrent clients it measures:

- submit-to-result first: each client submits a Python `print(1)`, follows its
  `GET /executions/{id}/events` stream until the terminal event, then reads the result with
  `GET /executions/{id}` (admission, the pod, the monitor, the result_processor, the SSE hop);
- then `POST /executions` alone: each client submits back to back for S seconds; requests per
  second and the latency of each answer (recorded in MongoDB, published to the broker).

The submissions of the POST-only runs queue up in the pipeline; the mesh is torn down after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from execmesh.client.http import parse_sse
from tests.e2e.api_client import ApiMesh, start_api_mesh

LEVELS = (1, 10, 50)
TERMINAL = {"completed", "failed", "timed_out", "cancelled", "rejected"}
BODY = {"language": "python", "script": "print(1)"}
RUNS_PER_CLIENT = {1: 10, 10: 3, 50: 1}


@dataclass(frozen=True)
class Figures:
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def post_only(api: ApiMesh, keys: list[str], seconds: float) -> Figures:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client(key: str) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as http:
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    answer = await http.post("/api/v1/executions", json=BODY)
                except httpx.HTTPError as error:
                    print(f"post: {error!r}", file=sys.stderr)
                    errors += 1
                    continue
                if answer.status_code == 202:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client(key) for key in keys))
    return Figures(len(keys), len(latencies), time.monotonic() - started, latencies, errors)


async def submit_to_result(api: ApiMesh, keys: list[str], runs: int) -> Figures:
    latencies: list[float] = []
    errors = 0

    async def client(key: str) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as http:
            for _ in range(runs):
                started = time.perf_counter()
                try:
                    answer = await http.post("/api/v1/executions", json=BODY)
                    url = answer.headers["location"]
                    async with http.stream("GET", f"{url}/events", timeout=120) as events:
                        async for _event in parse_sse_async(events.aiter_lines()):
                            pass
                    while (await http.get(url)).json()["status"] not in TERMINAL:
                        await asyncio.sleep(0.05)  # the result is stored a moment after
                except (httpx.HTTPError, KeyError) as error:
                    print(f"submit-to-result: {error!r}", file=sys.stderr)
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(client(key) for key in keys))
    return Figures(len(keys), len(latencies), time.monotonic() - started, latencies, errors)


async def parse_sse_async(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    buffered: list[str] = []
    async for line in lines:
        buffered.append(line)
        if line == "":
            for event in parse_sse(iter(buffered)):
                yield event.event
            buffered = []


def table(title: str, rows: list[Figures]) -> list[str]:
    lines = [f"### {title}", "", "| clients | requests | req/s | p50 ms | p99 ms | errors |"]
    lines.append("|---|---|---|---|---|---|")
    for f in rows:
        lines.append(
            f"| {f.clients} | {f.requests} | {f.rate:.1f} | {f.percentile(50):.1f} | "
            f"{f.percentile(99):.1f} | {f.errors} |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--report", type=Path, default=Path(__file__).with_name("REPORT.md"))
    args = parser.parse_args()
    env = {
        "EXECMESH_API_RATE_PER_SECOND": "100000",
        "EXECMESH_API_MAX_ACTIVE_PER_USER": "100000",
    }
    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    mesh = start_api_mesh(root, **env)
    api = next(mesh)
    try:
        keys = [api.key(f"bench{n}") for n in range(max(LEVELS))]
        e2e = [
            asyncio.run(submit_to_result(api, keys[:level], RUNS_PER_CLIENT[level]))
            for level in LEVELS
        ]
        posts = [asyncio.run(post_only(api, keys[:level], args.seconds)) for level in LEVELS]
    finally:
        mesh.close()
    load = os.getloadavg()
    report = [
        "# bench/api: the API gateway in front of the local mesh",
        "",
        f"`.venv/bin/python bench/api/run.py --seconds {args.seconds:g}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average after: {load[0]:.1f}. One uvicorn worker, FerretDB (SQLite), local Kafka.",
        "",
        *table("POST /executions alone (recorded, published; 202)", posts),
        *table("Submit to result (python print(1), followed by SSE)", e2e),
        "Submit-to-result at 10 and 50 clients queues behind the admission limits "
        "(EXECMESH_MAX_GLOBAL, default 10 running at once).",
        "",
    ]
    args.report.write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
