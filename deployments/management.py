"""The management deployment: TorchServe's /models API over a persisted registry."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.auth import load_or_create_token
from deployments.management_api import create_management_app
from deployments.model_manager import ModelManager
from deployments.settings import ManagementArgs

logger = logging.getLogger("ray.serve")
# The handle call every ingress makes about once a second (discovery_interval_s).
POLLED_PREFIX = "CALL routing "


class QuietPolling(logging.Filter):
    """Drops Serve's access-log lines of the ingresses' routing polls: one line a second on the
    `make serve` console and in the replica log said nothing. HTTP calls of the management API
    (``POST /models ...``) are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False):
            return True
        return not str(record.msg).startswith(POLLED_PREFIX)


@serve.deployment(name="Management", num_replicas=1)
@serve.ingress()
class ManagementDeployment:
    """Owns the registry; restores registered models when it starts (or restarts)."""

    async def __init__(self, args: ManagementArgs) -> None:
        serve_logger = logging.getLogger("ray.serve")
        if not any(isinstance(f, QuietPolling) for f in serve_logger.filters):
            serve_logger.addFilter(QuietPolling())
        self._manager = ModelManager(args)
        self._token = load_or_create_token(self._manager.state_dir)
        self._restore: asyncio.Task[Any] | None = None
        # Bring registered models back as soon as the server (or this replica) starts.
        self._ensure_restoring()
        logger.info(
            "Management API ready: state dir %s, model store %s, key file %s/key_file.json",
            self._manager.state_dir,
            self._manager.model_store,
            self._manager.state_dir,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_management_app(self._manager, self._token, on_request=self._ensure_restoring)

    def _ensure_restoring(self) -> None:
        if self._restore is None:
            self._restore = asyncio.get_running_loop().create_task(self._manager.restore())
            self._restore.add_done_callback(_log_failure)

    async def routing(self) -> dict[str, Any]:
        """Default versions and versions being removed, for the ingress (handle call)."""
        self._ensure_restoring()
        return self._manager.routing()

    def token(self) -> str:
        """The bearer token, for an ingress configured to protect inference (handle call)."""
        return self._token


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Restoring registered models failed: %s", task.exception())
