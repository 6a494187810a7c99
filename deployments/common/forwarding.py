"""An HTTP request handed from the ingress to another deployment's ASGI app, as plain data.

The ingress is the only HTTP listener when Serve's proxy is off; it forwards ``/models`` calls
to the management deployment, which runs them through its own FastAPI app in-process with
:func:`call_asgi`. Plain picklable data crosses the handle, never a Starlette request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Asgi = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class ForwardedRequest:
    """What the ASGI app needs of one HTTP request."""

    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass(frozen=True)
class ForwardedResponse:
    """The complete response of the ASGI app."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class ManagementCall:
    """One TorchServe ``ManagementAPIsService`` gRPC call: its RPC name, the request message's
    fields and the caller's ``authorization`` metadata (the management app checks it)."""

    rpc: str
    fields: dict[str, Any] = field(default_factory=dict)
    authorization: str | None = None


async def call_asgi(app: Asgi, request: ForwardedRequest, root_path: str = "") -> ForwardedResponse:
    """Run ``request`` through ``app`` and collect its response (no streaming)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": root_path,
        "query_string": request.query_string,
        "headers": request.headers,
        "client": request.client,
        "server": None,
    }
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": request.body, "more_body": False}

    status, headers, chunks = 500, [], []

    async def send(message: dict) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return ForwardedResponse(status, headers, b"".join(chunks))
