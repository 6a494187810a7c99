"""The HTTP ingress deployment: TorchServe's inference API in front of every model."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve

from deployments.http_api import create_app
from deployments.serve_router import ServeRouter
from deployments.settings import IngressArgs


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Wires the FastAPI app to a router over Serve handles; the routes live in http_api."""

    async def __init__(self, args: IngressArgs) -> None:
        self._args = args
        self._router = ServeRouter(args)
        # Start watching Serve now, so /ping is truthful before the first prediction.
        await self._router.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._args, self._router)
