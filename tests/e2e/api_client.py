"""The API gateway of a test mesh: keys, an HTTP client, waiting for results through the API."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from execmesh.client.http import TERMINAL
from execmesh.client.keys import KeyStore, Role
from execmesh.mongo import connect
from tests.e2e.mesh import Mesh, start_mesh

# api 19920, broker 20000, node 20001, functions 20021-20026: clear of the other meshes.
API_PORT_OFFSET = 11920
API_REDIS_DB = 11


@dataclass
class ApiMesh:
    mesh: Mesh

    @property
    def url(self) -> str:
        return self.mesh.local.service_url("api")

    def key(self, user: str, *, admin: bool = False) -> str:
        store = KeyStore(connect(self.mesh.settings))
        return store.create(user, Role.ADMIN if admin else Role.USER).key

    def client(self, key: str | None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def wait_for(
        self, client: httpx.Client, execution_id: str, timeout: float = 90.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = client.get(f"/api/v1/executions/{execution_id}").json()
            if body.get("status") in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{execution_id} not finished in {timeout}s: {body}")
            time.sleep(0.1)


def start_api_mesh(root: Path, **env: str) -> Iterator[ApiMesh]:
    defaults = {
        "EXECMESH_API_RATE_PER_SECOND": "50",
        "EXECMESH_API_MAX_ACTIVE_PER_USER": "20",
        "EXECMESH_API_MAX_STREAMS_PER_USER": "3",
    }
    meshes = start_mesh(
        root, port_offset=API_PORT_OFFSET, redis_db=API_REDIS_DB, **{**defaults, **env}
    )
    mesh = next(meshes)
    try:
        yield ApiMesh(mesh)
    finally:
        # stop_all stops at the first process that already exited: leave those out of it.
        for name, process in list(mesh.running.items()):
            if process.poll() is not None:
                print(f"{name} had exited with {process.returncode}: see {root / name}.log")
                del mesh.running[name]
        try:
            meshes.close()
        finally:
            # A process that ignored SIGTERM for 30 s stops the cleanup: never leave it behind.
            for process in mesh.running.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
