"""One model version as a Ray Serve deployment: a handler behind ``@serve.batch``.

Requests are decoded one by one on a small thread pool (a bad input fails alone, before it can
join a batch), then batched; every batch runs on the replica's one inference thread
(:mod:`deployments.model.executor`). While a batch runs, decoded requests wait at the idle
gate, so the next batch takes all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

# OpenMP threads that wait at a barrier sleep instead of spinning: a replica's threads share
# the machine with its decode threads, the ingress and other replicas, and a spinning team on
# a busy machine ran resnet18 at 1.9 forwards/s instead of 7.8 (docs/performance.md). Read
# by libgomp when torch loads, which happens after this module is imported, in __init__.
# Set here, at import, not in the constructor: measured on resnet18 at concurrency 1, the
# constructor was too late (15.4 req/s instead of 18.8, alternated runs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ray import serve

from deployments.common.messages import Answer, Rejected
from deployments.common.settings import BatchingConfig, ModelAppArgs
from deployments.model.executor import InferenceExecutor, decode_pool, machine_cores
from deployments.model.input_failures import rejection
from deployments.model.stepwise import explain_one, stream_one
from handlers.explain_request import ExplainRequest
from handlers.handler_catalog import create_handler
from handlers.tensor_data import TensorRequest

logger = logging.getLogger("ray.serve")


# Explanations a replica computes at once (each holds its activations for a chunk of steps);
# more wait their turn.
EXPLANATIONS_AT_ONCE = 2

# Serve options of every replica that runs models (dedicated and pooled).
REPLICA_OPTIONS: dict[str, Any] = {
    # A model that cannot load should fail its application quickly, not retry 20 times.
    "max_constructor_retry_count": 3,
    # A crashed replica is noticed (and replaced) at the next health check; until then the
    # ingress may still route to it, so check often: the check is one cheap actor call.
    "health_check_period_s": 2,
    "health_check_timeout_s": 15,
    "graceful_shutdown_timeout_s": 10,
}


@serve.deployment(**REPLICA_OPTIONS)
class ModelDeployment:
    """Loads the handler once, decodes each request alone, runs the model per batch."""

    def __init__(self, args: ModelAppArgs, placement_note: str | None = None) -> None:
        spec = self._spec = args.model
        if placement_note:
            logger.warning(placement_note)
        self._handler = create_handler(spec)
        self._executor = InferenceExecutor(spec.name, spec.torch_threads)
        self._decoders = decode_pool(max(2, machine_cores()))
        try:
            self._executor.call(self._handler.load)
        except Exception as exc:
            # Logged with the reason here; Serve also shows it in the application's status.
            logger.error("Model %s version %s failed to load: %s", spec.name, spec.version, exc)
            raise
        if self._handler.device.type != "cpu" and spec.torch_threads is None:
            self._executor.pin_threads(1)  # the work is on the GPU: one CPU thread feeds it
        # Set while no batch runs; see BatchingConfig.wait_for_idle_model.
        self._idle = asyncio.Event()
        self._idle.set()
        self._wait_for_idle = True
        self._explaining = asyncio.Semaphore(EXPLANATIONS_AT_ONCE)
        logger.info(
            "Model %s version %s ready on %s (handler %s, torch threads %s)",
            spec.name,
            spec.version,
            self._handler.device,
            spec.handler,
            self._executor.fixed_threads or f"auto (1-{self._executor.cores})",
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings from YAML or a live config update, without a restart."""
        batching = BatchingConfig.model_validate(user_config or {})
        self._run_batch.set_max_batch_size(batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._wait_for_idle = batching.wait_for_idle_model

    async def predict(
        self, body: bytes | TensorRequest, content_type: str | None = None
    ) -> Answer | Rejected:
        """Answer one input (encoded bytes, or the numeric tensors of an Open Inference request);
        bad input is refused here, before it can join a batch."""
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            if isinstance(body, TensorRequest):
                item = await loop.run_in_executor(self._decoders, self._handler.preprocess_tensors, body)
            else:
                item = await loop.run_in_executor(
                    self._decoders, self._handler.preprocess, body, content_type
                )
            queued = time.perf_counter()
            if self._wait_for_idle:
                # Everyone held here enters the batch queue together when the model frees up.
                await self._idle.wait()
            answer = await self._run_batch((item, queued))
        except Exception as exc:  # this input's own answer, never its batch-mates' failure
            return rejection(exc, self._spec.name)
        answer.timings["preprocess_s"] = queued - started
        return answer

    def signature(self) -> dict[str, Any]:
        """The model's inputs, outputs and platform as Open Inference metadata (handle call)."""
        return {**self._handler.signature(), "handler": self._spec.handler}

    async def predict_many(self, inputs: list[tuple[bytes, str | None]]) -> list[Answer | Rejected]:
        """Answer a group of inputs sent in one call; each is decoded and batched on its own."""
        return await asyncio.gather(*(self.predict(body, content_type) for body, content_type in inputs))

    async def explain_many(
        self, inputs: list[tuple[bytes, str | None]], request: ExplainRequest
    ) -> list[Answer | Rejected]:
        """Explain each input (``/explanations``, KServe ``:explain``): decoded on its own,
        then computed chunk by chunk between prediction batches (:mod:`.stepwise`)."""
        explain = partial(explain_one, self._handler, self._executor, self._decoders, self._explaining)
        return await asyncio.gather(*(explain(body, kind, request) for body, kind in inputs))

    async def predict_stream(self, body: bytes, content_type: str | None = None) -> AsyncIterator[Any]:
        """The handler's partial answers to one input as they come (a Serve streaming call:
        ``handle.options(stream=True)``). Bad input or a failure midway ends the stream with a
        :class:`Rejected` part; a cancelled call stops the handler at its next part."""
        async for part in stream_one(self._handler, self._executor, self._decoders, body, content_type):
            yield part

    async def describe_handler(self) -> Any:
        """The handler's description of itself (describe with ``customized=true``; handle call)."""
        return await asyncio.get_running_loop().run_in_executor(self._decoders, self._handler.describe)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def _run_batch(self, entries: list[tuple[Any, float]]) -> list[Answer]:
        batch_started = time.perf_counter()
        self._idle.clear()
        try:
            results = await self._executor.run_batch(
                self._handler.predict_batch, [item for item, _ in entries], inputs=len(entries)
            )
        finally:
            self._idle.set()
        inference_s = time.perf_counter() - batch_started
        # A TorchServe handler's custom metrics (context.metrics) ride on the batch's first answer.
        emitted = getattr(self._handler, "metrics", None)
        custom = tuple(emitted.drain()) if emitted is not None else ()
        return [
            Answer(
                result,
                len(entries),
                timings={"queue_s": batch_started - queued, "inference_s": inference_s},
                load_seconds=self._handler.load_seconds,
                handler_metrics=custom if index == 0 else (),
            )
            for index, (result, (_, queued)) in enumerate(zip(results, entries, strict=True))
        ]
