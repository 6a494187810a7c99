"""One API per listener, as TorchServe listens: a plain ASGI filter in front of the entry point.

In ``raytorch torchserve`` mode the ingress has a listener per API (TorchServe's inference 8080,
management 8081, metrics 8082). Each listener's app is the usual entry point behind
:class:`ApiFilter`, which answers TorchServe's 404 for a path of another API (so ``/models`` is
never reachable on the inference address) and serves TorchServe's token API, ``/token``, on the
management listener. Paths every TorchServe listener answers (``OPTIONS /``,
``/api-description``) pass everywhere. CORS, when configured, wraps the whole listener with
Starlette's middleware, so a preflight is answered before any key is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs

from starlette.middleware.cors import CORSMiddleware

from deployments.common.torchserve_args import Api, Cors
from deployments.common.ts_keys import KeyFile
from handlers.errors import RESOURCE_NOT_FOUND, RaytorchError, ResourceNotFoundError

MANAGEMENT_PREFIXES = ("/models", "/workflows", "/token")


def api_of(path: str) -> Api | None:
    """The API a path belongs to; None for the paths every listener answers."""
    if path in ("/", "/api-description"):
        return None
    for prefix in MANAGEMENT_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return "management"
    if path == "/metrics" or path.startswith("/metrics/"):
        return "metrics"
    return "inference"


class ApiFilter:
    """Pass only ``apis``' paths to ``app``; answer ``/token`` itself when ``keys`` is set."""

    def __init__(self, app: Any, apis: Collection[Api], keys: KeyFile | None = None) -> None:
        self.app = app
        self.apis = frozenset(apis)
        self.keys = keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        api = api_of(path)
        if api is not None and api not in self.apis:
            await _send_json(send, 404, ResourceNotFoundError(RESOURCE_NOT_FOUND).to_dict())
            return
        if path == "/token" and self.keys is not None:
            await self._token(scope, send)
            return
        await self.app(scope, receive, send)

    async def _token(self, scope: dict, send: Any) -> None:
        """TorchServe's token API: ``/token?type=management|inference`` with the API key."""
        assert self.keys is not None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.keys.check(headers.get("authorization"), "API")
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            kind = (query.get("type") or [""])[0]
            self.keys.regenerate(kind)
        except RaytorchError as exc:
            await _send_json(send, exc.status, exc.to_dict())
            return
        await _send_json(send, 200, {"status": f"A new {kind} key is in {self.keys.path}"})


def with_cors(app: Any, cors: Cors | None) -> Any:
    """``app`` behind Starlette's CORS middleware when TorchServe's cors_allowed_* are set."""
    if cors is None or not cors.allow_origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=cors.allow_origins,
        allow_methods=cors.allow_methods or ["GET"],
        allow_headers=cors.allow_headers,
    )


async def _send_json(send: Any, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
