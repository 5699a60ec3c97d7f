"""The Kubernetes API subset the worker and the monitor use, in real Kubernetes JSON shapes.

Pods (create, get, list, watch, delete, log), ConfigMaps and NetworkPolicies (create, get,
list, delete), discovery, and Status objects for errors, so that the official
``kubernetes`` client works against the node unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from execmesh.node import podstatus
from execmesh.node.kubelet import CONFIGMAP, POD, Kubelet
from execmesh.node.sandbox import PodRejected, validate
from execmesh.node.selectors import SelectorError, object_filter
from execmesh.node.store import AlreadyExists, Expired, NotFound, Obj, Store

NETWORKPOLICY = "networkpolicies"
# resource -> (apiVersion, kind, namespaced path prefix)
KINDS: dict[str, tuple[str, str]] = {
    POD: ("v1", "Pod"),
    CONFIGMAP: ("v1", "ConfigMap"),
    NETWORKPOLICY: ("networking.k8s.io/v1", "NetworkPolicy"),
}
CORE = "/api/v1"
NETWORKING = "/apis/networking.k8s.io/v1"
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-execmesh", "platform": "linux"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, name: str = "", kind: str = ""):
        super().__init__(message)
        self.code, self.reason, self.name, self.kind = code, reason, name, kind


def json_response(body: Any, status_code: int = 200) -> Response:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return Response(payload, status_code, media_type="application/json")


def status_object(code: int, reason: str, message: str, name: str = "", kind: str = "") -> Obj:
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name or kind:
        body["details"] = {"name": name, "kind": kind}
    return body


Handler = Callable[[Request, str], Awaitable[Response]]


def _errors(handler: Handler, kind: str) -> Callable[[Request], Awaitable[Response]]:
    async def guarded(request: Request) -> Response:
        name = request.path_params.get("name", "")
        try:
            return await handler(request, kind)
        except ApiError as exc:
            status = status_object(exc.code, exc.reason, str(exc), exc.name, exc.kind)
            return json_response(status, exc.code)
        except NotFound as exc:
            return json_response(status_object(404, "NotFound", str(exc), name, kind), 404)
        except AlreadyExists as exc:
            return json_response(status_object(409, "AlreadyExists", str(exc), name, kind), 409)
        except (PodRejected, SelectorError) as exc:
            return json_response(status_object(422, "Invalid", str(exc), name, kind), 422)
        except json.JSONDecodeError as exc:
            return json_response(status_object(400, "BadRequest", f"invalid JSON: {exc}"), 400)

    return guarded


class NodeApi:
    def __init__(self, store: Store, kubelet: Kubelet) -> None:
        self.store = store
        self.kubelet = kubelet

    # -- objects ---------------------------------------------------------------------------

    async def create(self, request: Request, resource: str) -> Response:
        namespace = request.path_params["namespace"]
        obj = await request.json()
        api_version, kind = KINDS[resource]
        if not isinstance(obj, dict) or obj.get("kind", kind) != kind:
            raise ApiError(400, "BadRequest", f"the body must be a {kind}")
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the body does not match the URL")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        now = podstatus.timestamp()
        obj.update(apiVersion=api_version, kind=kind)
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now)
        meta.setdefault("generation", 1)
        if resource == POD:
            validate(obj)
            _default_pod(obj)
            obj["status"] = podstatus.scheduled(obj, now)
        created = self.store.create(resource, obj)
        if resource == POD:
            self.kubelet.admit(created)
        return json_response(created, 201)

    async def get(self, request: Request, resource: str) -> Response:
        params = request.path_params
        return json_response(self.store.get(resource, params["namespace"], params["name"]))

    async def delete(self, request: Request, resource: str) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        if resource == POD:
            return json_response(self.kubelet.delete(namespace, name, await _grace(request)))
        deleted = self.store.delete(resource, namespace, name)
        status = status_object(200, "", "", name, resource)
        status["details"]["uid"] = deleted["metadata"]["uid"]
        return json_response(status)

    async def collection(self, request: Request, resource: str) -> Response:
        namespace = request.path_params.get("namespace")
        query = request.query_params
        matches = object_filter(query.get("labelSelector"), query.get("fieldSelector"))
        if query.get("watch") in ("true", "1"):
            return self._watch(resource, namespace, matches, query)
        api_version, kind = KINDS[resource]
        items = self.store.list_objects(resource, namespace, matches)
        return json_response(
            {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )

    def _watch(
        self,
        resource: str,
        namespace: str | None,
        matches: Callable[[Obj], bool],
        query: Any,
    ) -> Response:
        since = query.get("resourceVersion") or ""
        timeout = float(query.get("timeoutSeconds") or 0) or None

        def wanted(obj: Obj) -> bool:
            return (namespace is None or obj["metadata"].get("namespace") == namespace) and matches(
                obj
            )

        async def events() -> AsyncIterator[bytes]:
            try:
                if since in ("", "0"):
                    subscription, _ = self.store.subscribe(resource, self.store.resource_version)
                    backlog = [
                        ("ADDED", o) for o in self.store.list_objects(resource, namespace, matches)
                    ]
                else:
                    subscription, history = self.store.subscribe(resource, int(since))
                    backlog = [(e.type, e.object) for e in history if wanted(e.object)]
            except Expired as exc:
                yield _event_line("ERROR", status_object(410, "Expired", str(exc)))
                return
            try:
                for event_type, obj in backlog:
                    yield _event_line(event_type, obj)
                loop = asyncio.get_running_loop()
                ends = None if timeout is None else loop.time() + timeout
                while True:
                    remaining = None if ends is None else ends - loop.time()
                    if remaining is not None and remaining <= 0:
                        return
                    try:
                        event = await asyncio.wait_for(subscription.queue.get(), remaining)
                    except TimeoutError:
                        return
                    if event is None:
                        return
                    if event.kind == resource and wanted(event.object):
                        yield _event_line(event.type, event.object)
            finally:
                self.store.unsubscribe(subscription)

        return StreamingResponse(events(), media_type="application/json")

    # -- pods only -------------------------------------------------------------------------

    async def log(self, request: Request, resource: str) -> Response:
        params = request.path_params
        pod = self.store.get(POD, params["namespace"], params["name"])
        path = self.kubelet.log_path(pod)
        state = pod["status"]["containerStatuses"][0]["state"]
        if "terminated" in state and not path.exists():
            return Response(b"", media_type="text/plain")
        if "waiting" in state or not path.exists():
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            container = pod["spec"]["containers"][0]["name"]
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{params["name"]}" is waiting to start: {reason}',
            )
        query = request.query_params
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        if query.get("follow") in ("true", "1") and not podstatus.is_terminal(pod):
            return StreamingResponse(self._follow(pod, limit), media_type="text/plain")
        data = path.read_bytes()
        if query.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else b""
        return Response(data[:limit] if limit is not None else data, media_type="text/plain")

    async def _follow(self, pod: Obj, limit: int | None) -> AsyncIterator[bytes]:
        meta = pod["metadata"]
        sent = 0
        with self.kubelet.log_path(pod).open("rb") as file:
            while limit is None or sent < limit:
                chunk = file.read(65536 if limit is None else min(65536, limit - sent))
                if chunk:
                    sent += len(chunk)
                    yield chunk
                    continue
                current = self.store.find(POD, meta["namespace"], meta["name"])
                if current is None or podstatus.is_terminal(current):
                    rest = file.read() if limit is None else file.read(limit - sent)
                    if rest:
                        yield rest
                    return
                await asyncio.sleep(0.05)

    # -- discovery -------------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        return json_response(VERSION)

    async def api_versions(self, request: Request) -> Response:
        return json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def core_resources(self, request: Request) -> Response:
        return json_response(_resource_list("v1", [("pods", "Pod"), ("configmaps", "ConfigMap")]))

    async def groups(self, request: Request) -> Response:
        version = {"groupVersion": "networking.k8s.io/v1", "version": "v1"}
        group = {"name": "networking.k8s.io", "versions": [version], "preferredVersion": version}
        return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})

    async def networking_resources(self, request: Request) -> Response:
        return json_response(
            _resource_list("networking.k8s.io/v1", [("networkpolicies", "NetworkPolicy")])
        )

    async def namespace(self, request: Request) -> Response:
        name = request.path_params["namespace"]
        return json_response(
            {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name))},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
        )

    async def healthz(self, request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    def routes(self) -> list[Route]:
        def objects(prefix: str, resource: str) -> list[Route]:
            ns = f"{prefix}/namespaces/{{namespace}}/{resource}"
            return [
                Route(ns, _errors(self.collection, resource), methods=["GET"]),
                Route(ns, _errors(self.create, resource), methods=["POST"]),
                Route(ns + "/{name}", _errors(self.get, resource), methods=["GET"]),
                Route(ns + "/{name}", _errors(self.delete, resource), methods=["DELETE"]),
                Route(f"{prefix}/{resource}", _errors(self.collection, resource)),
            ]

        return [
            Route("/version", self.version),
            Route("/healthz", self.healthz),
            Route("/readyz", self.healthz),
            Route("/livez", self.healthz),
            Route("/api", self.api_versions),
            Route(CORE, self.core_resources),
            Route("/apis", self.groups),
            Route(NETWORKING, self.networking_resources),
            Route(CORE + "/namespaces/{namespace}/pods/{name}/log", _errors(self.log, POD)),
            Route(CORE + "/namespaces/{namespace}/pods/{name}/status", _errors(self.get, POD)),
            *objects(CORE, POD),
            *objects(CORE, CONFIGMAP),
            *objects(NETWORKING, NETWORKPOLICY),
            Route(CORE + "/namespaces/{namespace}", self.namespace),
        ]


def build_app(api: NodeApi, lifespan: Any = None) -> Starlette:
    return Starlette(routes=api.routes(), lifespan=lifespan)


def _event_line(event_type: str, obj: Obj) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _resource_list(group_version: str, resources: list[tuple[str, str]]) -> Obj:
    verbs = ["create", "delete", "get", "list", "watch"]
    found = [
        {"name": name, "singularName": "", "namespaced": True, "kind": kind, "verbs": verbs}
        for name, kind in resources
    ]
    if group_version == "v1":
        found.append(
            {
                "name": "pods/log",
                "singularName": "",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get"],
            }
        )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": found,
    }


async def _grace(request: Request) -> float | None:
    if "gracePeriodSeconds" in request.query_params:
        return float(request.query_params["gracePeriodSeconds"])
    with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
        body = await request.body()
        options = json.loads(body) if body else {}
        if isinstance(options, dict) and options.get("gracePeriodSeconds") is not None:
            return float(options["gracePeriodSeconds"])
    return None


def _default_pod(pod: Obj) -> None:
    spec = pod["spec"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec["nodeName"] = podstatus.NODE_NAME
    for container in spec["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container.setdefault("resources", {})
