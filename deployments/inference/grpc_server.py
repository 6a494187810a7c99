"""The ingress's gRPC listener (grpc.aio), and what every RPC shares.

Serve's own gRPC proxy is off in the shipped configs (``proxy_location: Disabled``: it would
add back the proxy hop), so the ingress replica serves gRPC itself on ``grpc_options.port``,
bound to the HTTP host, in its own event loop. Services are built from the compiled
``.proto`` descriptors (:mod:`deployments.protos`): each servicer is a plain class whose
methods are named after the RPCs.

Every RPC goes through :func:`handle_call`: a telemetry record (access-log line, and metrics
for predictions, counted with the HTTP status the outcome maps to), the request id (the
client's ``x-request-id`` metadata or a new one, sent back as initial metadata) and one error
mapping, :func:`deployments.common.http_errors.grpc_code_name`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from deployments.common.http_errors import grpc_code_name, unexpected_error
from deployments.common.ports import describe_port_owner
from deployments.inference.http_server import PortInUseError
from deployments.inference.telemetry import REQUEST_ID_HEADER, RequestRecord, Telemetry, request_id_from
from deployments.protos import Method
from handlers.errors import RaytorchError

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
# Headroom over the body limit for the envelope of a request (names, shapes, parameters).
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata (lower-case keys; binary ``-bin`` entries left out)."""
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def peer_host(context: grpc.aio.ServicerContext) -> str:
    """``ipv4:127.0.0.1:5555`` -> ``127.0.0.1`` (the access log's client)."""
    peer = context.peer() or "-"
    address = peer.split(":", 1)[1] if ":" in peer else peer
    return address.rsplit(":", 1)[0].strip("[]") or "-"


def open_record(context: grpc.aio.ServicerContext, path: str, protocol: str) -> RequestRecord:
    """The telemetry record of one RPC (or one message of a stream)."""
    request_id = request_id_from(metadata_of(context).get(REQUEST_ID_HEADER))
    return RequestRecord(request_id, "GRPC", path, peer_host(context), protocol)


async def abort_with(context: grpc.aio.ServicerContext, error: RaytorchError) -> None:
    """End the call with ``error``'s gRPC code and message (``retry-after`` in the trailers)."""
    if error.retry_after_s:
        context.set_trailing_metadata((("retry-after", error.headers()["Retry-After"]),))
    await context.abort(grpc.StatusCode[grpc_code_name(error)], error.message)


def as_error(exc: Exception, record: RequestRecord) -> RaytorchError:
    """Any exception as one of ours; unexpected ones are logged with the request id."""
    return unexpected_error(exc, record.path, record.request_id)


async def handle_call(
    telemetry: Telemetry,
    context: grpc.aio.ServicerContext,
    record: RequestRecord,
    work: Callable[[], Awaitable[T]],
) -> T:
    """Run one RPC's ``work``: record it once, answer errors with their gRPC code."""
    status = 500
    try:
        await context.send_initial_metadata(((REQUEST_ID_HEADER, record.request_id),))
        result = await work()
        status = 200
        return result
    except asyncio.CancelledError:
        status = 499  # the client went away or its deadline passed
        raise
    except Exception as exc:
        error = as_error(exc, record)
        status = error.status
        await abort_with(context, error)
        raise AssertionError("unreachable: abort raises") from None
    finally:
        telemetry.finish(record, status)


def generic_handler(service: str, methods: dict[str, Method], servicer: object) -> grpc.GenericRpcHandler:
    """Bind ``servicer``'s methods to the RPCs of ``service`` (missing ones: UNIMPLEMENTED)."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for name, method in methods.items():
        implementation = getattr(servicer, name, None)
        if implementation is None:
            continue
        handlers[name] = kinds[(method.client_streaming, method.server_streaming)](
            implementation,
            request_deserializer=method.request.FromString,
            response_serializer=method.response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service, handlers)


class GrpcServer:
    """A grpc.aio server on one address, in the running event loop; at most
    ``max_concurrent_rpcs`` calls run at once (None: no limit)."""

    def __init__(
        self,
        handlers: list[grpc.GenericRpcHandler],
        host: str,
        port: int,
        max_body_bytes: int,
        reuse_port: bool,
        tls: tuple[bytes, bytes] | None = None,
        max_concurrent_rpcs: int | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._tls = tls  # (private key, certificate chain), PEM: serve over TLS
        # Calls over it are refused at once with RESOURCE_EXHAUSTED by grpc itself.
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._handlers = handlers
        self._options = [
            ("grpc.max_receive_message_length", max_body_bytes + MESSAGE_OVERHEAD_BYTES),
            # A single replica must own its port: SO_REUSEPORT (gRPC's default on Linux) would
            # let it share the port silently with a leftover server.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and start serving; PortInUseError naming the holder when the port is taken."""
        server = grpc.aio.server(options=self._options, maximum_concurrent_rpcs=self._max_concurrent_rpcs)
        server.add_generic_rpc_handlers(self._handlers)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self._tls is not None:
                bound = server.add_secure_port(address, grpc.ssl_server_credentials([self._tls]))
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise PortInUseError(
                f"Cannot serve gRPC on {address}: the port is taken by {describe_port_owner(self.port)}. "
                "Stop that process or change grpc_options.port."
            )
        await server.start()
        self._server = server
        logger.info("raytorch ingress serving gRPC on %s", address)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting calls; calls in progress get ``grace_s`` to finish."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
