"""Tell Serve's request router which models a pool replica holds, so a request goes to a replica
that already has its model (``handle.options(multiplexed_model_id=...)`` on the ingress side).

This is the report ``@serve.multiplexed`` sends from every replica; the pool keeps its models
itself (a memory budget, which the decorator's fixed model count cannot express), so it sends
the same report itself, at most every ``PUSH_INTERVAL_S``. A failed report only costs affinity:
the router then picks the replica with the fewest models, and that replica loads the model.
"""

from __future__ import annotations

import asyncio
import logging

from deployments.common.ray_private import record_loaded_models

logger = logging.getLogger("ray.serve")

PUSH_INTERVAL_S = 0.1  # Serve's own interval for these reports


class LoadedModelsReport:
    """Sends the latest set of loaded (or loading) model ids to Serve's controller."""

    def __init__(self, replica_id: object) -> None:
        self._replica_id = replica_id  # serve.get_replica_context().replica_id
        self._latest: list[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def changed(self, model_ids: list[str]) -> None:
        """Record the new set; it is sent shortly, together with any change that follows."""
        self._latest = model_ids
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._push_soon())

    async def _push_soon(self) -> None:
        while self._latest is not None:
            await asyncio.sleep(PUSH_INTERVAL_S)
            model_ids, self._latest = self._latest, None
            try:
                await asyncio.to_thread(record_loaded_models, self._replica_id, model_ids)
            except Exception as exc:
                if not self._warned:
                    logger.warning("Could not tell Serve's router which models this replica holds: %s", exc)
                    self._warned = True
