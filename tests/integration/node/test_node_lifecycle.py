"""The full lifecycle of an execution pod, for every runtime installed on this machine.

The pods are built by execmesh.pods.manifest and run the real entry point; the test drives
the node only through the official kubernetes client, as the worker and the monitor do.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from node_harness import NAMESPACE, needs_sandbox, terminated, unique, wait_terminal

from execmesh.pods.manifest import ExecutionSpec, Limits, build_configmap, build_pod
from execmesh.pods.report import PodReport, parse_pod_report
from execmesh.pods.runtimes import Runtime, available

pytestmark = [pytest.mark.node, needs_sandbox]

MiB = 1024 * 1024

# Each program echoes its first argument and its stdin, writes to stderr, exits 3.
PROGRAMS = {
    "python": (
        "import sys\nprint('hello', sys.argv[1], sys.stdin.read())\n"
        "print('oops', file=sys.stderr)\nsys.exit(3)\n"
    ),
    "node": (
        "const fs = require('fs');\n"
        "console.log('hello', process.argv[2], fs.readFileSync(0, 'utf8'));\n"
        "console.error('oops');\nprocess.exit(3);\n"
    ),
    "go": (
        'package main\n\nimport (\n\t"fmt"\n\t"io"\n\t"os"\n)\n\n'
        "func main() {\n\tin, _ := io.ReadAll(os.Stdin)\n"
        '\tfmt.Println("hello", os.Args[1], string(in))\n'
        '\tfmt.Fprintln(os.Stderr, "oops")\n\tos.Exit(3)\n}\n'
    ),
    "ruby": "puts \"hello #{ARGV[0]} #{STDIN.read}\"\nwarn 'oops'\nexit 3\n",
    "bash": 'echo "hello $1 $(cat)"\necho oops >&2\nexit 3\n',
}


def runtimes() -> list[Runtime]:
    return [r for r in available("local") if r.language in PROGRAMS]


def python_runtime() -> Runtime:
    python = next((r for r in runtimes() if r.language == "python"), None)
    if python is None:
        pytest.skip("no python here")
    return python


def run_to_the_end(
    core: client.CoreV1Api, spec: ExecutionSpec, timeout: float
) -> tuple[client.V1Pod, PodReport]:
    """The execution's pod, run through the entry point until it ends, and its report."""
    core.create_namespaced_config_map(NAMESPACE, build_configmap(spec, NAMESPACE))
    pod_body = build_pod(spec, NAMESPACE)
    core.create_namespaced_pod(NAMESPACE, pod_body)
    pod = wait_terminal(core, pod_body["metadata"]["name"], timeout=timeout)
    log = core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, _preload_content=False).data
    return pod, parse_pod_report(terminated(pod).message, log)


def limits_for(runtime: Runtime) -> Limits:
    if runtime.language == "go":  # compiles fmt and friends into an empty GOCACHE
        return Limits(
            memory_bytes=1024 * MiB, timeout_seconds=90, tmp_bytes=512 * MiB, cpu_millicores=2000
        )
    return Limits(timeout_seconds=20)


@pytest.mark.parametrize("runtime", runtimes(), ids=lambda r: r.key)
def test_an_execution_runs_to_completion_and_reports_through_the_client(
    core: client.CoreV1Api, runtime: Runtime
) -> None:
    spec = ExecutionSpec(
        execution_id=unique(runtime.language),
        runtime=runtime,
        script=PROGRAMS[runtime.language],
        stdin="world",
        args=("there",),
        limits=limits_for(runtime),
    )
    configmap = build_configmap(spec, NAMESPACE)
    pod_body = build_pod(spec, NAMESPACE)
    name = pod_body["metadata"]["name"]
    core.create_namespaced_config_map(NAMESPACE, configmap)
    created = core.create_namespaced_pod(NAMESPACE, pod_body)
    assert created.status.phase == "Pending"

    pod = wait_terminal(core, name, timeout=120)
    state = terminated(pod)
    log = core.read_namespaced_pod_log(name, NAMESPACE, _preload_content=False).data
    report = parse_pod_report(state.message, log)
    assert (pod.status.phase, state.exit_code, state.reason) == ("Failed", 3, "Error")
    assert report.exit_code == 3
    assert report.stdout.decode().strip() == "hello there world"
    assert report.stderr.decode().strip() == "oops"
    assert not report.stdout_truncated and not report.timed_out
    assert report.peak_memory_bytes is not None and report.peak_memory_bytes > 0

    version = core.delete_namespaced_pod(name, NAMESPACE).metadata.resource_version
    events = watch.Watch().stream(
        core.list_namespaced_pod,
        NAMESPACE,
        field_selector=f"metadata.name={name}",
        resource_version=str(int(version) - 1),
        timeout_seconds=10,
    )
    assert any(event["type"] == "DELETED" for event in events)
    core.delete_namespaced_config_map(configmap["metadata"]["name"], NAMESPACE)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod(name, NAMESPACE)
    assert missing.value.status == 404


def test_output_past_the_entry_points_cap_is_flagged_in_the_report(
    core: client.CoreV1Api,
) -> None:
    spec = ExecutionSpec(
        execution_id=unique("flood"),
        runtime=python_runtime(),
        script="import sys\nsys.stdout.buffer.write(b'\\xff' * 100 * 1024 * 1024)\n",
        limits=Limits(output_bytes=1 * MiB, timeout_seconds=60),
    )
    started = time.monotonic()
    _, report = run_to_the_end(core, spec, timeout=90)
    assert report.stdout == b"\xff" * MiB
    assert report.stdout_truncated
    assert time.monotonic() - started < 60


def test_a_memory_bomb_through_the_entry_point_is_oom_killed_and_still_reported(
    core: client.CoreV1Api,
) -> None:
    spec = ExecutionSpec(
        execution_id=unique("oom"),
        runtime=python_runtime(),
        script="x = bytearray(1024 * 1024 * 1024)\n",
        limits=Limits(memory_bytes=64 * MiB, tmp_bytes=8 * MiB, timeout_seconds=20),
    )
    pod, report = run_to_the_end(core, spec, timeout=60)
    state = terminated(pod)
    assert (pod.status.phase, state.reason, state.exit_code) == ("Failed", "OOMKilled", 137)
    assert (report.exit_code, report.signal) == (137, 9)
    assert report.peak_memory_bytes is not None and report.peak_memory_bytes <= 64 * MiB
