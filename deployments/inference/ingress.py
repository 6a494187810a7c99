"""The ingress deployment: the server's HTTP entry point, in front of every model.

With ``proxy_location: Disabled`` (the shipped configs) the ingress replica listens on the
config's ``http_options.host:port`` itself: a request costs one process and one Ray call to the
model, instead of Serve's Python proxy, a Ray call to the ingress and another to the model
(measured: 3x less CPU per request outside the model). With Serve's proxy on (older configs),
the same ASGI app is served behind it. Thin: wiring only; the parts live in this package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from ray import serve

from deployments.common.auth import check_bearer
from deployments.common.settings import IngressArgs
from deployments.inference.http_entry import HttpEntry
from deployments.inference.http_server import HttpServer, bind
from deployments.inference.predictions import Predictor
from deployments.inference.router import ServeRouter
from deployments.inference.routes import create_routes
from deployments.inference.telemetry import Telemetry

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ListenPlan:
    """Where this replica listens, if at all (None: Serve's proxy is the listener)."""

    host: str
    port: int


async def listen_plan() -> ListenPlan | None:
    """Read the config's ``http_options`` and ``proxy_location`` from Serve's controller."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    http = await controller.get_http_config.remote()
    location = await controller.get_proxy_location.remote()
    if str(getattr(location, "value", location)) != "Disabled":
        return None
    return ListenPlan(http.host or "127.0.0.1", http.port)


@serve.deployment(graceful_shutdown_timeout_s=10)
@serve.ingress()
class Ingress:
    """Builds the router, telemetry and HTTP entry point; listens when Serve's proxy is off."""

    async def __init__(self, args: IngressArgs) -> None:
        self._args = args
        self._server: HttpServer | None = None
        self._router = ServeRouter(args)
        self._telemetry = Telemetry(args.access_log, args.log_dir, args.access_log_console)
        predictor = Predictor(self._router, self._telemetry.metrics.in_flight)
        routes = create_routes(self._router, predictor, self._telemetry, self._authorize, args.max_body_bytes)
        plan = await listen_plan()
        self._entry = HttpEntry(
            predictor,
            self._telemetry,
            routes,
            self._authorize,
            args.max_body_bytes,
            management=self._router.forward_to_management if plan else None,
            echo_request_id=plan is not None,
        )
        # Follow Serve now, so /ping is truthful before the first prediction.
        await self._router.start()
        if plan is not None:
            self._server = HttpServer(
                self._entry, bind(plan.host, plan.port, reuse_port=args.num_replicas > 1)
            )
            await self._server.start()

    def __serve_build_asgi_app__(self) -> HttpEntry:
        return self._entry

    async def _authorize(self, header: str | None) -> None:
        if self._args.inference_auth:
            check_bearer(header, await self._router.token())

    async def __del__(self) -> None:
        # Serve calls this on a graceful stop: finish requests in progress, free the port.
        if getattr(self, "_server", None) is not None:
            await self._server.stop()
        if hasattr(self, "_telemetry"):
            self._router.directory.stop()
            self._telemetry.access.close()
