"""What one client may hold of the ingress's own HTTP listener: requests in progress and time.

In front of the entry point when the ingress owns the listener (``proxy_location: Disabled``;
behind Serve's proxy, Serve applies ``max_ongoing_requests`` itself):

- at most ``max_ongoing_requests`` requests are in progress at once; the next one is answered
  503 with ``Retry-After`` at once, before its body is read. Health probes are not counted, so
  a load balancer still hears how the server is while it is full;
- a request's body must have arrived within ``body_timeout_s`` of its headers: reading it
  later fails with 408, and the connection is closed after that answer, so a client sending a
  byte now and then holds neither a slot nor its buffered body for long.

The connection cap and the deadline on request heads are the listener's own
(:mod:`deployments.inference.http_server`). Plain ASGI, no Ray.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from deployments.common.http_errors import oip_error_body, torchserve_error_body
from deployments.common.settings import IngressArgs
from deployments.inference.http_server import HttpServer
from deployments.inference.telemetry import REQUEST_ID_HEADER, RequestRecord, Telemetry, request_id_from
from handlers.errors import BodyTimeoutError, ServerBusyError

Asgi = Callable[[dict, Any, Any], Awaitable[None]]
HEALTH_PATHS = frozenset({"/ping", "/v2/health/live", "/v2/health/ready"})
BUSY_RETRY_AFTER_S = 1.0


class ListenerLimits:
    """ASGI middleware applying the limits above to ``app``."""

    def __init__(self, app: Asgi, telemetry: Telemetry, max_ongoing: int, body_timeout_s: float) -> None:
        self.app = app
        self.telemetry = telemetry
        self.max_ongoing = max_ongoing
        self.body_timeout_s = body_timeout_s
        self.ongoing = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = scope["path"] not in HEALTH_PATHS
        if counted and self.ongoing >= self.max_ongoing:
            await self._refuse(scope, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        late = body_done = False

        async def receive_in_time() -> dict:
            nonlocal late, body_done
            if body_done:  # waiting for a disconnect (a streamed answer): no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                body_done = not message.get("more_body", False)
                return message
            except asyncio.TimeoutError:
                late = True
                raise BodyTimeoutError(
                    f"The request body did not arrive within {self.body_timeout_s:g}s "
                    "(the ingress's body_timeout_s): send it faster, or in smaller requests."
                ) from None

        async def send_closing_when_late(message: dict) -> None:
            if late and message["type"] == "http.response.start":
                # The rest of a late body may still come: do not read it as the next request.
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        self.ongoing += counted
        try:
            await self.app(scope, receive_in_time, send_closing_when_late)
        finally:
            self.ongoing -= counted

    async def _refuse(self, scope: dict, send: Any) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        record = RequestRecord(
            request_id_from(headers.get(REQUEST_ID_HEADER)),
            scope["method"],
            scope["path"],
            (scope.get("client") or ("-",))[0],
            "http",
        )
        error = ServerBusyError(
            f"The server is handling its limit of {self.max_ongoing} requests (the ingress's "
            "max_ongoing_requests): retry shortly.",
            retry_after_s=BUSY_RETRY_AFTER_S,
        )
        shape = oip_error_body if scope["path"].startswith("/v2") else torchserve_error_body
        body = json.dumps(shape(error)).encode()
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID_HEADER.encode(), record.request_id.encode()),
            *((k.lower().encode(), v.encode()) for k, v in error.headers().items()),
        ]
        try:
            await send({"type": "http.response.start", "status": error.status, "headers": raw})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.telemetry.finish(record, error.status)


def limited_http_server(
    app: Asgi,
    telemetry: Telemetry,
    args: IngressArgs,
    sock: socket.socket,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> HttpServer:
    """The ingress's own HTTP server for ``app`` on ``sock``, with every limit of ``args``
    (HTTPS when the PEM files are given)."""
    limited = ListenerLimits(app, telemetry, args.max_ongoing_requests, args.body_timeout_s)
    return HttpServer(
        limited,
        sock,
        max_connections=args.max_connections,
        head_timeout_s=args.head_timeout_s,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
