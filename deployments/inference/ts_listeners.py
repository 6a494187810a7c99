"""The ingress's listeners in TorchServe's layout (``IngressArgs.torchserve``, set by
``raytorch torchserve``): one HTTP(S) listener per API and gRPC inference and management
listeners, each on the address TorchServe's config gives it.

Every HTTP listener runs the usual entry point (:class:`HttpEntry`) behind
:class:`~deployments.inference.api_filter.ApiFilter`, so it answers its own API's paths only.
Keys are TorchServe's (:mod:`deployments.common.ts_keys`): the inference key on the inference
API (health probes stay open, as with ``inference_auth``), the management key on ``/models``
(checked by the management app itself), none on metrics (TorchServe's metrics API has none).
"""

from __future__ import annotations

import logging
from pathlib import Path

from deployments.common.settings import IngressArgs
from deployments.common.torchserve_args import TlsFiles, TorchServeFront
from deployments.common.ts_keys import KeyFile
from deployments.inference.api_filter import ApiFilter, with_cors
from deployments.inference.data_plane import DataPlane
from deployments.inference.grpc_oip import OpenInferenceServicer
from deployments.inference.grpc_server import GrpcServer
from deployments.inference.grpc_torchserve import TorchServeInferenceServicer, TorchServeManagementServicer
from deployments.inference.http_entry import HttpEntry
from deployments.inference.http_server import HttpServer, bind
from deployments.inference.listener_limits import limited_http_server
from deployments.inference.management_link import ManagementLink
from deployments.inference.routes import create_inference_app
from deployments.inference.telemetry import Telemetry

logger = logging.getLogger("ray.serve")


def grpc_tls(tls: TlsFiles | None) -> tuple[bytes, bytes] | None:
    """(private key, certificate chain) as gRPC's server credentials want them."""
    if tls is None:
        return None
    return Path(tls.private_key_file).read_bytes(), Path(tls.certificate_file).read_bytes()


class TorchServeListeners:
    """Builds every listener of ``args.torchserve``; :meth:`start` binds them all or none."""

    def __init__(
        self, args: IngressArgs, plane: DataPlane, management: ManagementLink, telemetry: Telemetry
    ) -> None:
        front: TorchServeFront = args.torchserve  # type: ignore[assignment]
        self._args, self._telemetry = args, telemetry
        self.keys = KeyFile(front.key_file, front.token_expiration_min) if front.key_file else None

        async def inference_key(header: str | None) -> None:
            if self.keys is not None:
                self.keys.check(header, "inference")

        async def no_key(header: str | None) -> None:
            return None

        async def management_key(header: str | None) -> None:
            # Checked again by the management app; here it refuses a caller before the body.
            if self.keys is not None:
                self.keys.check(header, "management")

        inference_routes = create_inference_app(plane, telemetry, inference_key, args.max_body_bytes)
        metrics_routes = create_inference_app(plane, telemetry, no_key, args.max_body_bytes)
        self._http: list[tuple[str, int, object, TlsFiles | None]] = []
        for listener in front.listeners:
            apis = set(listener.apis)
            entry = HttpEntry(
                plane,
                telemetry,
                inference_routes if "inference" in apis or "management" in apis else metrics_routes,
                inference_key,
                args.max_body_bytes,
                management=management.forward_to_management if "management" in apis else None,
                check_management_token=management_key,
            )
            app = with_cors(ApiFilter(entry, apis, self.keys if "management" in apis else None), front.cors)
            self._http.append((listener.host, listener.port, app, listener.tls))
        self._grpc: list[GrpcServer] = []
        for listener in front.grpc_listeners:
            if listener.api == "inference":
                services = [
                    OpenInferenceServicer(plane, telemetry, inference_key).handler(),
                    TorchServeInferenceServicer(plane, telemetry, inference_key).handler(),
                ]
            else:
                services = [TorchServeManagementServicer(management.manage, telemetry).handler()]
            self._grpc.append(
                GrpcServer(
                    services,
                    listener.host,
                    listener.port,
                    args.max_body_bytes,
                    reuse_port=False,
                    tls=grpc_tls(listener.tls),
                    max_concurrent_rpcs=args.max_ongoing_requests,
                )
            )
        self._servers: list[HttpServer] = []

    async def start(self) -> None:
        """Bind and start every listener; on a failure stop those already started and raise."""
        try:
            for host, port, app, tls in self._http:
                certfile, keyfile = (tls.certificate_file, tls.private_key_file) if tls else (None, None)
                sock = bind(host, port, reuse_port=False)
                server = limited_http_server(app, self._telemetry, self._args, sock, certfile, keyfile)
                self._servers.append(server)
                await server.start()
            for grpc_server in self._grpc:
                await grpc_server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop accepting on every listener; requests in progress finish."""
        for grpc_server in self._grpc:
            await grpc_server.stop()
        for server in self._servers:
            await server.stop()
        self._servers = []
