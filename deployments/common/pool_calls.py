"""Control calls to a pool's replicas, from the management part and the ingress: check that a
model loads, unload it everywhere, and read what each replica holds.

Every call has a deadline; broadcasts collect what the replicas answered in time and skip the
rest (a replica that is starting or stopping must not stall a describe or a metrics scrape).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from deployments.common.model_table import PoolState
from handlers.errors import ModelNotReadyError, RaytorchError, RequestTimeoutError

logger = logging.getLogger("ray.serve")
REPORT_TIMEOUT_S = 3.0
UNLOAD_TIMEOUT_S = 10.0
CHECK_RETRY_AFTER_S = 5.0


class PoolCalls:
    """Handles to pool deployments, and the calls made through them."""

    def __init__(self) -> None:
        self._handles: dict[tuple[str, str], Any] = {}

    def _handle(self, pool: PoolState) -> Any:
        from ray import serve

        key = (pool.app_name, pool.deployment_name)
        if key not in self._handles:
            self._handles[key] = serve.get_deployment_handle(pool.deployment_name, app_name=pool.app_name)
        return self._handles[key]

    async def validate(
        self, pool: PoolState, model_id: str, spec: dict[str, Any], timeout_s: float
    ) -> dict[str, float]:
        """Load the model once in one replica without keeping it; raises the load's error."""
        call = self._handle(pool).validate.remote(model_id, spec)
        try:
            return await asyncio.wait_for(call, timeout_s)
        except asyncio.TimeoutError:
            call.cancel()
            raise RequestTimeoutError(
                f"Pool {pool.name} did not load the model within {timeout_s:g}s"
            ) from None
        except RaytorchError:
            raise
        except Exception as exc:
            cause = getattr(exc, "cause", None)  # errors raised in the replica arrive wrapped
            if isinstance(cause, RaytorchError):
                raise cause from None
            raise ModelNotReadyError(
                f"Pool {pool.name} could not load the model to check it ({type(exc).__name__}: {exc}); retry",
                retry_after_s=CHECK_RETRY_AFTER_S,
            ) from None

    async def unload(self, pool: PoolState, model_id: str) -> int:
        """Drop the model on every replica; returns how many held it."""
        answers = await self._broadcast(pool, "unload", UNLOAD_TIMEOUT_S, model_id)
        return sum(1 for answer in answers if answer is True)

    async def reports(self, pool: PoolState) -> list[dict[str, Any]]:
        """Each replica's models and budget (replicas that do not answer in time are left out)."""
        return [a for a in await self._broadcast(pool, "report", REPORT_TIMEOUT_S) if isinstance(a, dict)]

    async def _broadcast(self, pool: PoolState, method: str, timeout_s: float, *args: Any) -> list[Any]:
        try:
            response = self._handle(pool).broadcast(method, *args)
            return await response.results_async(timeout_s=timeout_s, return_exceptions=True)
        except Exception as exc:
            logger.warning("Broadcasting %s to pool %s failed: %s", method, pool.name, exc)
            self._handles.pop((pool.app_name, pool.deployment_name), None)
            return []
