"""The ingress's own HTTP listener: uvicorn (httptools) on the configured host and port.

When Serve's proxy is off (``proxy_location: Disabled`` in the shipped configs), the ingress
replica itself listens on ``http_options.host:port``, so a request reaches the ingress without
a proxy process and a Ray call in between. Several ingress replicas on one node share the port
with SO_REUSEPORT; a single replica binds it alone, so a leftover process holding the port is
reported (with its pid) instead of silently sharing it. Open connections are capped, and a
connection that does not send a complete request head in time is closed (the limits on what
one request may hold are :mod:`deployments.inference.listener_limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deployments.common.ports import describe_port_owner

logger = logging.getLogger("ray.serve")
BACKLOG = 2048
KEEP_ALIVE_S = 75  # longer than common load balancers' idle timeouts (60 s)
HEAD_TIMEOUT_S = 10.0  # IngressArgs.head_timeout_s's default


class PortInUseError(RuntimeError):
    """The configured port is taken by another process."""


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket on ``host:port``; PortInUseError naming the holder when taken."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"Cannot listen on {host}:{port}: the port is taken by {describe_port_owner(port)}. "
                "Stop that process (a server left over from an earlier run?) or change http_options.port."
            ) from None
        raise
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the replica's process belongs to Ray, which stops
    it; a captured SIGTERM would only be re-raised after our shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _HeadDeadline(HttpToolsProtocol):
    """httptools with a deadline on request heads: uvicorn closes idle keep-alive connections
    but waits forever for the first request of a new connection, and any byte of a head resets
    its timer. Here a connection that has not completed a request line and headers within
    ``head_timeout_s`` of opening (or ``KEEP_ALIVE_S`` after its last answer) is closed, so idle
    or trickling clients cannot fill the connection cap (``limit_concurrency``)."""

    head_timeout_s = HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(KEEP_ALIVE_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(seconds, self._head_too_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_late(self) -> None:
        self._head_timer = None
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    """uvicorn serving an ASGI app on one socket, inside the running event loop; HTTPS when
    ``ssl_certfile`` and ``ssl_keyfile`` (PEM) are given.

    ``max_connections`` caps the open connections (uvicorn's ``limit_concurrency``: a request
    arriving over it is answered 503); ``head_timeout_s`` is the time a new connection has to
    send its first request head.
    """

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        max_connections: int | None = None,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        protocol = type("HeadDeadline", (_HeadDeadline,), {"head_timeout_s": head_timeout_s})
        config = uvicorn.Config(
            app,
            http=protocol,
            limit_concurrency=max_connections,
            loop="none",
            lifespan="off",
            access_log=False,  # ours is written by the entry point, with request ids
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self.scheme = "https" if ssl_certfile else "http"
        self.address = sock.getsockname()
        self._sock = sock
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving; returns once the socket accepts connections."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what went wrong
            await asyncio.sleep(0.01)
        logger.info("raytorch ingress listening on %s://%s:%d", self.scheme, *self.address[:2])

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout_s``), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        self._task = None
