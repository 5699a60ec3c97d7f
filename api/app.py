"""The execmesh API gateway: ``uvicorn api.app:app`` (``execmesh up`` starts it).

Under ``/api/v1``: executions (submit, batch, read, list, cancel, events, output), runtimes,
the admin queue state and the OpenAPI document; ``/health/*`` for probes; ``POST /`` is where
the ``api`` Trigger delivers the lifecycle events that feed the live streams.
``EXECMESH_API_SERVES`` picks a part: ``public`` (``/api/v1``) or ``events`` (``POST /``) for
the two Knative Services of api/deploy/service.yaml, ``all`` (the default) on one machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from api import executions, problems, system
from api.bodylimit import BodySizeLimit
from api.gateway import Gateway
from execmesh.errors import ExecmeshError
from execmesh.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

V1 = "/api/v1"

HEALTH_ROUTES = [
    Route("/health/liveness", system.liveness, methods=["GET"]),
    Route("/health/readiness", system.readiness, methods=["GET"]),
]
PUBLIC_ROUTES = [
    Route(f"{V1}/executions", executions.executions_root, methods=["GET", "POST"]),
    Route(f"{V1}/executions/batch", executions.submit_batch, methods=["POST"]),
    Route(f"{V1}/executions/{{execution_id}}", executions.get_execution, methods=["GET"]),
    Route(f"{V1}/executions/{{execution_id}}/cancel", executions.cancel, methods=["POST"]),
    Route(f"{V1}/executions/{{execution_id}}/events", executions.events, methods=["GET"]),
    Route(
        f"{V1}/executions/{{execution_id}}/output/{{stream}}", executions.output, methods=["GET"]
    ),
    Route(f"{V1}/runtimes", system.runtimes, methods=["GET"]),
    Route(f"{V1}/admin/queue", executions.queue_state, methods=["GET"]),
    Route(f"{V1}/openapi.json", system.openapi, methods=["GET"]),
]
# Events carry no credentials: on a cluster only a cluster-local Service may serve this.
EVENT_ROUTES = [Route("/", system.receive_event, methods=["POST"])]
ROUTES_OF = {
    "all": PUBLIC_ROUTES + EVENT_ROUTES + HEALTH_ROUTES,
    "public": PUBLIC_ROUTES + HEALTH_ROUTES,
    "events": EVENT_ROUTES + HEALTH_ROUTES,
}


def create_app(
    settings: Settings | None = None,
    make_gateway: Callable[[Settings], Gateway] = Gateway.from_settings,
    *,
    run_outbox: bool = True,
) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        gateway = make_gateway(settings)
        await anyio.to_thread.run_sync(gateway.records.ensure_indexes)
        # Probing the interpreters takes a moment: not on the first request's time.
        await anyio.to_thread.run_sync(gateway.runtimes)
        async with anyio.create_task_group() as tasks:
            # The outbox publishes submissions: the work of whoever takes them.
            if run_outbox and settings.api_serves != "events":
                tasks.start_soon(gateway.outbox.run)
            try:
                yield {"gateway": gateway}
            finally:
                tasks.cancel_scope.cancel()
                await gateway.aclose()

    app = Starlette(
        routes=ROUTES_OF[settings.api_serves],
        lifespan=lifespan,
        exception_handlers={
            problems.Problem: problems.on_problem,
            HTTPException: problems.on_http_exception,
            ExecmeshError: problems.on_execmesh_error,
            Exception: problems.on_unexpected,
        },
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    return app


app = create_app()
