"""Route predictions to model deployments through Ray Serve handles.

The model table is refreshed from ``serve.status()`` in the background. A lookup that misses
(unknown model, no ready replica) answers from a snapshot taken *after* the request arrived, so
a model that just appeared or just became ready (a synchronous register has returned) is found;
such forced snapshots are shared by every waiting request and at most one per
``MIN_FORCED_REFRESH_GAP_S`` is taken, however many requests miss.
Every handle call has a deadline, and handles of versions that disappear or stop being
ready are dropped at once (a call through a handle of an app being deleted would hang).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from deployments.messages import Answer, Rejected
from deployments.model_table import ModelTable, ModelVersionState
from deployments.settings import IngressArgs
from handlers.errors import ModelNotFoundError, ModelNotReadyError, RaytorchError, RequestTimeoutError

logger = logging.getLogger("ray.serve")

OVERLOAD_RETRY_AFTER_S = 1.0
REPLICA_LOST_RETRY_AFTER_S = 2.0
MIN_FORCED_REFRESH_GAP_S = 0.1
ROUTING_TIMEOUT_S = 2.0
MANAGEMENT_APP = "management"


class ServeRouter:
    """A :class:`deployments.http_api.Router` over Ray Serve."""

    def __init__(self, settings: IngressArgs) -> None:
        self._settings = settings
        self._table = ModelTable()
        self._handles: dict[tuple[str, str], Any] = {}
        self._refresh_started_at = -1.0  # when the latest completed snapshot was requested
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._management: Any = None
        self._token: str | None = None

    async def refresh(self) -> None:
        """Take a fresh snapshot of Serve's applications."""
        async with self._lock:
            await self._refresh_locked()

    async def _refresh_since(self, arrived: float) -> None:
        """Return once the table reflects a snapshot requested after ``arrived``."""
        async with self._lock:
            if self._refresh_started_at >= arrived:
                return  # someone else's forced refresh, taken while we waited for the lock
            next_allowed = self._refresh_started_at + MIN_FORCED_REFRESH_GAP_S
            await asyncio.sleep(max(0.0, next_allowed - time.monotonic()))
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        started = time.monotonic()
        status = await asyncio.to_thread(serve.status)
        table = ModelTable.from_status(status.applications)
        if MANAGEMENT_APP in status.applications:
            table.apply_routing(await self._management_routing())
        live = {
            (s.app_name, s.deployment_name)
            for versions in table.versions.values()
            for s in versions.values()
            if table.routable(s)
        }
        for key in list(self._handles):
            if key not in live:
                del self._handles[key]
        self._table = table
        self._refresh_started_at = started

    async def _management_routing(self) -> dict[str, Any]:
        try:
            if self._management is None:
                self._management = serve.get_deployment_handle("Management", app_name=MANAGEMENT_APP)
            return await asyncio.wait_for(self._management.routing.remote(), timeout=ROUTING_TIMEOUT_S)
        except Exception as exc:  # management restarting: keep the last known routing
            logger.warning("Could not read routing from the management app: %s", exc)
            self._management = None
            return {"defaults": self._table.defaults, "draining": sorted(self._table.draining)}

    async def token(self) -> str:
        """The management token (for inference auth), asked of the management app."""
        if self._token is None:
            handle = serve.get_deployment_handle("Management", app_name=MANAGEMENT_APP)
            self._token = await asyncio.wait_for(handle.token.remote(), timeout=ROUTING_TIMEOUT_S)
        return self._token

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.discovery_interval_s)
            try:
                await self.refresh()
            except Exception:  # keep polling; the next round may succeed
                logger.exception("Refreshing the model table failed")

    async def start(self) -> None:
        """Begin refreshing the model table in the background."""
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())
            try:
                await self.refresh()
            except Exception:  # Serve may still be starting; the poller retries
                logger.exception("First refresh of the model table failed")

    async def lookup(self, model: str, version: str | None) -> ModelVersionState:
        """Find a ready version, refreshing once if the table does not know it yet."""
        arrived = time.monotonic()
        await self.start()
        try:
            return self._table.lookup(model, version)
        except (ModelNotFoundError, ModelNotReadyError):
            pass
        await self._refresh_since(arrived)
        return self._table.lookup(model, version)

    async def versions(self, model: str) -> list[str]:
        """Versions of ``model`` that Serve knows (ready or not); 404 when there are none."""
        arrived = time.monotonic()
        await self.start()
        if model not in self._table.versions:
            await self._refresh_since(arrived)
        if model not in self._table.versions:
            raise ModelNotFoundError(f"Model not found: {model}")
        return sorted(self._table.versions[model])

    def _handle(self, state: ModelVersionState) -> Any:
        key = (state.app_name, state.deployment_name)
        if key not in self._handles:
            self._handles[key] = serve.get_deployment_handle(state.deployment_name, app_name=state.app_name)
        return self._handles[key]

    async def predict(self, model: str, version: str | None, body: bytes, content_type: str | None) -> Answer:
        """Send one input to the model version and wait for its answer within the deadline."""
        state = await self.lookup(model, version)
        response = self._handle(state).predict.remote(body, content_type)
        try:
            result = await asyncio.wait_for(response, timeout=self._settings.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeoutError(
                f'Model "{model}" did not answer within {self._settings.request_timeout_s:g}s'
            ) from None
        except BackPressureError:
            raise ModelNotReadyError(
                f'Model "{model}" is overloaded: its queue is full. Retry later.',
                retry_after_s=OVERLOAD_RETRY_AFTER_S,
            ) from None
        except RayActorError:
            # The replica died with this request in it (crash, OOM kill); Serve is replacing it.
            logger.warning('A replica of model "%s" died while serving a request', model)
            raise ModelNotReadyError(
                f'Model "{model}" lost the replica serving this request; a new one is starting. Retry.',
                retry_after_s=REPLICA_LOST_RETRY_AFTER_S,
            ) from None
        except (DeploymentUnavailableError, RayServeException) as exc:
            raise ModelNotReadyError(f'Model "{model}" is unavailable: {exc}', retry_after_s=5) from None
        except Exception as exc:
            # Errors raised in the replica arrive wrapped in a RayTaskError; unwrap ours.
            cause = getattr(exc, "cause", None)
            if isinstance(exc, RaytorchError) or isinstance(cause, RaytorchError):
                raise (cause if isinstance(cause, RaytorchError) else exc) from None
            raise
        if isinstance(result, Rejected):
            result.error.model_version = state.version  # for the metrics' version label
            raise result.error
        return dataclasses.replace(result, version=state.version)

    def ready_replicas(self) -> dict[tuple[str, str], int]:
        """Running replicas per model version in the latest snapshot."""
        return self._table.ready_replicas()

    def unhealthy_models(self) -> dict[str, str]:
        """Model versions without a ready replica in the latest snapshot."""
        return self._table.unhealthy()
