"""The management deployment: TorchServe's /models API over the state store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.common.auth import load_or_create_token
from deployments.common.forwarding import ForwardedRequest, ForwardedResponse, ManagementCall, call_asgi
from deployments.common.management_args import ManagementArgs
from deployments.common.routing import RoutingUpdate
from deployments.management.api import MOUNT_PATH, create_management_app
from deployments.management.grpc_calls import as_http
from deployments.management.manager import ModelManager
from deployments.management.serve_control import ServeControl
from deployments.management.torchserve_mode import (
    load_startup_models,
    management_authorizer,
    torchserve_management_app,
)
from deployments.management.workflow_api import MOUNT_PATH as WORKFLOWS_PATH
from deployments.management.workflow_api import create_workflow_app
from deployments.management.workflow_serve import WorkflowServe
from deployments.management.workflows import WorkflowManager

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

    async def __init__(self, args: ManagementArgs, workflow_serve: WorkflowServe) -> None:
        serve_logger = logging.getLogger("ray.serve")
        if not any(isinstance(f, QuietPolling) for f in serve_logger.filters):
            serve_logger.addFilter(QuietPolling())
        self._manager = ModelManager(args, ServeControl())
        ts = args.torchserve
        if ts is None:
            self._token = load_or_create_token(self._manager.state_dir)
            self._app = create_management_app(self._manager, self._token)
        else:  # `raytorch torchserve`: TorchServe's keys, enable_model_api, startup models
            self._token, self._app = "", torchserve_management_app(self._manager, ts)
        self._workflows = WorkflowManager(
            self._manager, workflow_serve, self._manager.state_dir, self._manager.model_store,
            self._manager.intake.download_policy, args.allow_archive_code, args.register_timeout_s,
        )  # fmt: skip
        workflow_auth = self._token if ts is None else management_authorizer(ts)
        self._workflow_app = create_workflow_app(self._workflows, workflow_auth)
        # Bring registered models (then workflows) back as soon as the server (or this replica) starts.
        self._restore = asyncio.get_running_loop().create_task(self._restore_all())
        self._restore.add_done_callback(_log_failure)
        if ts is not None and ts.startup_models:
            self._startup = asyncio.get_running_loop().create_task(
                load_startup_models(self._manager, ts.startup_models, ts.default_workers, self._restore)
            )
            self._startup.add_done_callback(_log_failure)
        key_file = ts.key_file if ts is not None else self._manager.state_dir / "key_file.json"
        logger.info(
            "Management API ready: state dir %s, model store %s, key file %s",
            self._manager.state_dir,
            self._manager.model_store,
            key_file,
        )

    async def _restore_all(self) -> None:
        await self._manager.restore()
        await self._workflows.restore()

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
        """A /models (or /workflows) request the ingress received on its own HTTP port (handle call)."""
        if request.path == WORKFLOWS_PATH or request.path.startswith(WORKFLOWS_PATH + "/"):
            return await call_asgi(self._workflow_app, request, root_path=WORKFLOWS_PATH)
        return await call_asgi(self._app, request, root_path=MOUNT_PATH)

    async def grpc_management(self, call: ManagementCall) -> ForwardedResponse:
        """A TorchServe ManagementAPIsService call an ingress received over gRPC (handle call),
        answered by the same API code as REST: parsing, token check, wording and errors."""
        return await call_asgi(self._app, as_http(call), root_path=MOUNT_PATH)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Restoring registered models failed: %s", task.exception())
