"""The management deployment: TorchServe's /models API over the state store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.common.auth import load_or_create_token
from deployments.common.forwarding import ForwardedRequest, ForwardedResponse, ManagementCall, call_asgi
from deployments.common.routing import RoutingUpdate
from deployments.common.settings import ManagementArgs
from deployments.management.api import MOUNT_PATH, create_management_app
from deployments.management.grpc_calls import as_http
from deployments.management.manager import ModelManager
from deployments.management.serve_control import ServeControl

logger = logging.getLogger("ray.serve")
# The handle call every ingress keeps open (a long poll of routing changes).
POLLED_PREFIX = "CALL routing_changes "


class QuietPolling(logging.Filter):
    """Drops Serve's access-log lines of the ingresses' routing long polls: they say nothing on
    the `make serve` console. HTTP calls of the management API are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False):
            return True
        return not str(record.msg).startswith(POLLED_PREFIX)


@serve.deployment(
    num_replicas=1,
    # Each ingress replica keeps one long poll open here, besides the API's own calls.
    max_ongoing_requests=64,
    # Long polls end on their own; do not hold up a server stop for them.
    graceful_shutdown_timeout_s=2,
)
@serve.ingress()
class ManagementDeployment:
    """Owns the state store; restores registered models when it starts (or restarts)."""

    async def __init__(self, args: ManagementArgs) -> None:
        serve_logger = logging.getLogger("ray.serve")
        if not any(isinstance(f, QuietPolling) for f in serve_logger.filters):
            serve_logger.addFilter(QuietPolling())
        self._manager = ModelManager(args, ServeControl())
        self._token = load_or_create_token(self._manager.state_dir)
        self._app = create_management_app(self._manager, self._token)
        # Bring registered models back as soon as the server (or this replica) starts.
        self._restore = asyncio.get_running_loop().create_task(self._manager.restore())
        self._restore.add_done_callback(_log_failure)
        logger.info(
            "Management API ready: state dir %s, model store %s, key file %s/key_file.json",
            self._manager.state_dir,
            self._manager.model_store,
            self._manager.state_dir,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    async def routing_changes(self, since: int, timeout_s: float, epoch: str = "") -> RoutingUpdate:
        """What the ingresses route on, once it differs from version ``since`` of ``epoch``
        (a long poll each ingress keeps open; handle call)."""
        return await self._manager.routing_changes(since, timeout_s, epoch)

    def pooled_spec(self, model_id: str) -> dict[str, Any] | None:
        """The model spec a pool replica loads for ``model_id`` (handle call; None: unknown)."""
        return self._manager.pools.spec(model_id)

    def token(self) -> str:
        """The bearer token, for an ingress configured to protect inference (handle call)."""
        return self._token

    async def http(self, request: ForwardedRequest) -> ForwardedResponse:
        """A /models request the ingress received on its own HTTP port (handle call)."""
        return await call_asgi(self._app, request, root_path=MOUNT_PATH)

    async def grpc_management(self, call: ManagementCall) -> ForwardedResponse:
        """A TorchServe ManagementAPIsService call an ingress received over gRPC (handle call),
        answered by the same API code as REST: parsing, token check, wording and errors."""
        return await call_asgi(self._app, as_http(call), root_path=MOUNT_PATH)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Restoring registered models failed: %s", task.exception())
