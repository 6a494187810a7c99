"""The ingress deployment: the server's HTTP (and gRPC) entry point, in front of every model.

With ``proxy_location: Disabled`` (the shipped configs) the ingress replica listens on the
config's ``http_options.host:port`` itself: a request costs one process and one Ray call to the
model, instead of Serve's Python proxy, a Ray call to the ingress and another to the model
(measured: 3x less CPU per request outside the model). With Serve's proxy on (older configs),
the same ASGI app is served behind it. With ``grpc: true`` in its args it also serves gRPC on
``grpc_options.port`` (Serve's own gRPC proxy stays off). Thin: wiring only; the parts live in
this package.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ray import serve

from deployments.common.auth import check_bearer
from deployments.common.ray_private import listen_options
from deployments.common.settings import IngressArgs
from deployments.inference.data_plane import DataPlane
from deployments.inference.grpc_oip import OpenInferenceServicer
from deployments.inference.grpc_server import GrpcServer
from deployments.inference.grpc_torchserve import TorchServeInferenceServicer, TorchServeManagementServicer
from deployments.inference.http_entry import HttpEntry
from deployments.inference.http_server import HttpServer, bind
from deployments.inference.listener_limits import limited_http_server
from deployments.inference.management_link import ManagementLink
from deployments.inference.router import ServeRouter
from deployments.inference.routes import create_inference_app
from deployments.inference.telemetry import Telemetry
from deployments.inference.ts_listeners import TorchServeListeners
from deployments.inference.workflow_calls import WorkflowCalls

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ListenPlan:
    """Where this replica listens: HTTP only when Serve's proxy is off (``http`` False: the
    proxy is the HTTP listener); gRPC on ``grpc_port`` when the args ask for it."""

    host: str
    port: int
    grpc_port: int
    http: bool = True


async def listen_plan() -> ListenPlan:
    """Read the config's ``http_options``, ``grpc_options`` and ``proxy_location`` from Serve's
    controller."""
    http, grpc_options, location = await listen_options()
    return ListenPlan(http.host or "127.0.0.1", http.port, grpc_options.port, location == "Disabled")


@serve.deployment(graceful_shutdown_timeout_s=10)
@serve.ingress()
class Ingress:
    """Builds the router, telemetry and HTTP entry point; listens when Serve's proxy is off."""

    async def __init__(self, args: IngressArgs) -> None:
        self._args = args
        self._server: HttpServer | None = None
        self._grpc: GrpcServer | None = None
        self._listeners: TorchServeListeners | None = None
        self._telemetry = Telemetry(args.access_log, args.log_dir, args.access_log_console)
        self._management = ManagementLink()
        self._router = ServeRouter(
            args,
            on_shadow=self._telemetry.metrics.pools.observe_shadow,
            routing_changes=self._management.routing_changes,
        )
        plane = DataPlane(self._router, self._telemetry.metrics.in_flight)
        routes = create_inference_app(plane, self._telemetry, self._authorize, args.max_body_bytes)
        plan = await listen_plan()
        self._entry = HttpEntry(
            plane,
            self._telemetry,
            routes,
            self._authorize,
            args.max_body_bytes,
            management=self._management.forward_to_management if plan.http else None,
            echo_request_id=plan.http,
            check_management_token=self._management.check_management_token,
            workflows=WorkflowCalls(self._telemetry, args.request_timeout_s),
        )
        # Follow Serve now, so /ping is truthful before the first prediction.
        await self._router.start()
        if args.torchserve is not None:  # `raytorch torchserve`: TorchServe's listeners instead
            self._listeners = TorchServeListeners(args, plane, self._management, self._telemetry)
            await self._listeners.start()
            return
        if plan.http:
            sock = bind(plan.host, plan.port, reuse_port=args.num_replicas > 1)
            self._server = limited_http_server(self._entry, self._telemetry, args, sock)
            await self._server.start()
        if args.grpc:
            self._grpc = grpc_server(plane, self._management, self._telemetry, self._authorize, args, plan)
            await self._grpc.start()

    def __serve_build_asgi_app__(self) -> HttpEntry:
        return self._entry

    async def _authorize(self, header: str | None) -> None:
        if self._args.inference_auth:
            check_bearer(header, await self._management.token())

    async def __del__(self) -> None:
        # Serve calls this on a graceful stop: finish requests in progress, free the ports.
        if getattr(self, "_listeners", None) is not None:
            await self._listeners.stop()
        if getattr(self, "_grpc", None) is not None:
            await self._grpc.stop()
        if getattr(self, "_server", None) is not None:
            await self._server.stop()
        if hasattr(self, "_telemetry"):
            self._router.directory.stop()
            self._telemetry.access.close()


def grpc_server(
    plane: DataPlane,
    management: ManagementLink,
    telemetry: Telemetry,
    authorize: Callable[[str | None], Awaitable[None]],
    args: IngressArgs,
    plan: ListenPlan,
) -> GrpcServer:
    """The gRPC server of the three services, on the HTTP host and ``grpc_options.port``."""
    services = [
        OpenInferenceServicer(plane, telemetry, authorize).handler(),
        TorchServeInferenceServicer(plane, telemetry, authorize).handler(),
        TorchServeManagementServicer(management.manage, telemetry).handler(),
    ]
    return GrpcServer(
        services,
        plan.host,
        plan.grpc_port,
        args.max_body_bytes,
        reuse_port=args.num_replicas > 1,
        max_concurrent_rpcs=args.max_ongoing_requests,
    )
