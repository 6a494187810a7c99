"""One model version as a Ray Serve deployment: a handler behind ``@serve.batch``."""

from __future__ import annotations

import asyncio
import logging
import time
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
    # A crashed replica is noticed (and replaced) at the next health check; until then the
    # ingress may still route to it, so check often: the check is one cheap actor call.
    health_check_period_s=2,
    health_check_timeout_s=15,
    graceful_shutdown_timeout_s=10,
)
class ModelDeployment:
    """Loads the handler once, decodes each request alone, runs the model per batch."""

    def __init__(self, args: ModelAppArgs, placement_note: str | None = None) -> None:
        self._spec = args.model
        if placement_note:
            logger.warning(placement_note)
        self._handler = create_handler(self._spec)
        try:
            self._handler.load()
        except Exception as exc:
            # Logged with the reason here; Serve also shows it in the application's status.
            logger.error("Model %s version %s failed to load: %s", self._spec.name, self._spec.version, exc)
            raise
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
        started = time.perf_counter()
        try:
            item = await asyncio.to_thread(self._handler.preprocess, body, content_type)
            queued = time.perf_counter()
            if self._wait_for_idle:
                # Everyone held here enters the batch queue together when the model frees up.
                await self._idle.wait()
            answer = await self._run_batch((item, queued))
        except RaytorchError as exc:
            return Rejected(exc)
        answer.timings["preprocess_s"] = queued - started
        return answer

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _run_batch(self, entries: list[tuple[Any, float]]) -> list[Answer]:
        batch_started = time.perf_counter()
        # Off the event loop, so requests keep arriving (and decoding) meanwhile.
        self._idle.clear()
        try:
            results = await asyncio.to_thread(self._handler.predict_batch, [item for item, _ in entries])
        finally:
            self._idle.set()
        inference_s = time.perf_counter() - batch_started
        return [
            Answer(
                result,
                len(entries),
                timings={"queue_s": batch_started - queued, "inference_s": inference_s},
                load_seconds=self._handler.load_seconds,
            )
            for result, (_, queued) in zip(results, entries, strict=True)
        ]
