"""One model version as a Ray Serve deployment: a handler behind ``@serve.batch``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from deployments.messages import Answer, Rejected
from deployments.settings import BatchingConfig, ModelAppArgs
from handlers.errors import RaytorchError
from handlers.registry import create_handler

logger = logging.getLogger("ray.serve")


@serve.deployment(
    # A model that cannot load should fail its application quickly, not retry 20 times.
    max_constructor_retry_count=3,
    health_check_period_s=10,
    graceful_shutdown_timeout_s=10,
)
class ModelDeployment:
    """Loads the handler once, decodes each request alone, runs the model per batch."""

    def __init__(self, args: ModelAppArgs, placement_note: str | None = None) -> None:
        self._spec = args.model
        if placement_note:
            logger.warning(placement_note)
        self._placement_note = placement_note
        self._handler = create_handler(self._spec)
        self._handler.load()
        # Set while no batch runs; see BatchingConfig.wait_for_idle_model.
        self._idle = asyncio.Event()
        self._idle.set()
        self._wait_for_idle = True
        logger.info(
            "Model %s version %s ready on %s (handler %s)",
            self._spec.name,
            self._spec.version,
            self._handler.device,
            self._spec.handler,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings from YAML or a live config update, without a restart."""
        batching = BatchingConfig.model_validate(user_config or {})
        self._run_batch.set_max_batch_size(batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._wait_for_idle = batching.wait_for_idle_model

    async def predict(self, body: bytes, content_type: str | None = None) -> Answer | Rejected:
        """Answer one request; bad input is refused here, before it can join a batch."""
        try:
            item = await asyncio.to_thread(self._handler.preprocess, body, content_type)
            if self._wait_for_idle:
                # Everyone held here enters the batch queue together when the model frees up.
                await self._idle.wait()
            return await self._run_batch(item)
        except RaytorchError as exc:
            return Rejected(exc)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _run_batch(self, items: list[Any]) -> list[Answer]:
        # Off the event loop, so requests keep arriving (and decoding) meanwhile.
        self._idle.clear()
        try:
            results = await asyncio.to_thread(self._handler.predict_batch, items)
        finally:
            self._idle.set()
        return [Answer(result, len(items)) for result in results]

    def describe(self) -> dict[str, Any]:
        """What this replica runs: for management and debugging."""
        return {
            "modelName": self._spec.name,
            "modelVersion": self._spec.version,
            "handler": self._spec.handler,
            "device": str(self._handler.device),
            "loadSeconds": self._handler.load_seconds,
            "placementNote": self._placement_note,
        }
