"""Pod status as a kubelet writes it: pure functions from what happened to status dicts.

The shapes are those of the Kubernetes core/v1 API (PodStatus, ContainerStatus,
ContainerState*), so the official client deserialises them into its models unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

NODE_NAME = "execmesh-node"
HOST_IP = "127.0.0.1"
LOG_TRUNCATED = "execmesh.io/LogTruncated"  # a pod condition: the node cut the log at its cap


def timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Outcome:
    """How a container ended, as the kubelet learnt it."""

    exit_code: int
    started_at: str
    finished_at: str
    reason: str = ""  # OOMKilled, DeadlineExceeded, ... or "" to derive from the exit code
    signal: int | None = None
    message: str = ""
    pod_reason: str = ""
    pod_message: str = ""
    log_truncated: bool = False


def _condition(kind: str, status: bool, now: str, reason: str = "") -> Obj:
    condition: Obj = {
        "type": kind,
        "status": "True" if status else "False",
        "lastProbeTime": None,
        "lastTransitionTime": now,
    }
    if reason:
        condition["reason"] = reason
    return condition


def _container_status(pod: Obj, state: Obj, *, ready: bool = False, started: bool = False) -> Obj:
    container = pod["spec"]["containers"][0]
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "containerID": f"execmesh://{pod['metadata']['uid']}",
        "ready": ready,
        "started": started,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


def scheduled(pod: Obj, now: str) -> Obj:
    """The status the node writes when it accepts a pod: Pending, container being created."""
    waiting = {"waiting": {"reason": "ContainerCreating"}}
    return {
        "phase": "Pending",
        "conditions": [
            _condition("PodScheduled", True, now),
            _condition("Initialized", True, now),
            _condition("ContainersReady", False, now, "ContainersNotReady"),
            _condition("Ready", False, now, "ContainersNotReady"),
        ],
        "hostIP": HOST_IP,
        "startTime": now,
        "qosClass": qos_class(pod),
        "containerStatuses": [_container_status(pod, waiting)],
    }


def waiting(pod: Obj, reason: str, message: str) -> Obj:
    status: Obj = dict(pod["status"])
    state = {"waiting": {"reason": reason, "message": message}}
    status["containerStatuses"] = [_container_status(pod, state)]
    return status


def running(pod: Obj, started_at: str) -> Obj:
    status: Obj = dict(pod["status"])
    status["phase"] = "Running"
    status["conditions"] = [
        _condition("PodScheduled", True, status.get("startTime", started_at)),
        _condition("Initialized", True, started_at),
        _condition("ContainersReady", True, started_at),
        _condition("Ready", True, started_at),
    ]
    state = {"running": {"startedAt": started_at}}
    status["containerStatuses"] = [_container_status(pod, state, ready=True, started=True)]
    return status


def container_reason(outcome: Outcome) -> str:
    if outcome.reason:
        return outcome.reason
    return "Completed" if outcome.exit_code == 0 else "Error"


def terminated(pod: Obj, outcome: Outcome) -> Obj:
    status: Obj = dict(pod["status"])
    succeeded = outcome.exit_code == 0 and not outcome.pod_reason
    status["phase"] = "Succeeded" if succeeded else "Failed"
    if outcome.pod_reason:
        status["reason"] = outcome.pod_reason
        status["message"] = outcome.pod_message
    finished = outcome.finished_at
    status["conditions"] = [
        _condition("PodScheduled", True, status.get("startTime", finished)),
        _condition("Initialized", True, finished),
        _condition("ContainersReady", False, finished, "PodCompleted"),
        _condition("Ready", False, finished, "PodCompleted"),
    ]
    if outcome.log_truncated:
        status["conditions"].append(_condition(LOG_TRUNCATED, True, finished, "OutputOverLogCap"))
    state: Obj = {
        "exitCode": outcome.exit_code,
        "reason": container_reason(outcome),
        "startedAt": outcome.started_at,
        "finishedAt": finished,
        "containerID": f"execmesh://{pod['metadata']['uid']}",
    }
    if outcome.signal is not None:
        state["signal"] = outcome.signal
    if outcome.message:
        state["message"] = outcome.message
    status["containerStatuses"] = [_container_status(pod, {"terminated": state})]
    return status


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def qos_class(pod: Obj) -> str:
    resources = pod["spec"]["containers"][0].get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if not limits and not requests:
        return "BestEffort"
    guaranteed = all(
        limits.get(name) is not None and requests.get(name, limits.get(name)) == limits.get(name)
        for name in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
CONTAINER_UNKNOWN = "The container could not be located when the pod was terminated"
MESSAGE_BYTES = 4096  # the kubelet's cap on a termination message


def lost_container(pod: Obj, now: str, pod_reason: str, pod_message: str) -> Outcome:
    """A container that ended without the node seeing how: never started, or node gone."""
    state = pod["status"]["containerStatuses"][0]["state"]
    started = (state.get("running") or {}).get("startedAt") or pod["status"].get("startTime")
    return Outcome(
        exit_code=137,
        started_at=started or now,
        finished_at=now,
        reason="ContainerStatusUnknown",
        message=CONTAINER_UNKNOWN,
        pod_reason=pod_reason,
        pod_message=pod_message,
    )


def deadline_exceeded(pod: Obj, now: str) -> Outcome:
    return lost_container(pod, now, "DeadlineExceeded", DEADLINE_MESSAGE)


def node_lost(pod: Obj, now: str) -> Outcome:
    return lost_container(pod, now, "NodeLost", "the local node restarted while the pod ran")


def node_shutdown(pod: Obj, now: str) -> Outcome:
    message = "Pod was terminated in response to the local node shutting down."
    return lost_container(pod, now, "Terminated", message)


def start_error(detail: str, now: str) -> Outcome:
    return Outcome(
        exit_code=128,
        started_at=now,
        finished_at=now,
        reason="StartError",
        message=detail[:MESSAGE_BYTES],
        pod_reason="NodeError",
        pod_message=f"the local node could not run the pod: {detail}"[:1024],
    )
