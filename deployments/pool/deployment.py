"""A model pool as a Ray Serve deployment: replicas that serve any model registered in the pool,
loading it on its first request (by Serve's multiplexed model id) and evicting the least
recently used models when the replica's memory budget is full.

Like a dedicated model replica, each request is decoded on its own (a bad input fails alone)
and runs in a batch on the replica's one inference thread, behind the idle gate. A batch holds
one model's requests: Serve's ``@serve.batch`` splits batches by multiplexed model id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from ray import serve

from deployments.common.messages import Answer, PoolEvent, Rejected
from deployments.common.naming import MANAGEMENT_APP, MANAGEMENT_DEPLOYMENT, parse_pooled_model_id
from deployments.common.settings import BatchingConfig, PoolArgs
from deployments.model.deployment import EXPLANATIONS_AT_ONCE, REPLICA_OPTIONS
from deployments.model.executor import InferenceExecutor, decode_pool, machine_cores
from deployments.model.input_failures import rejection
from deployments.model.stepwise import explain_one, stream_one
from deployments.pool.admission import ColdLoadGate
from deployments.pool.cache import MIB, LoadedModel, LoadOutcome, ModelCache
from deployments.pool.loader import PooledLoader
from deployments.pool.serve_routing import LoadedModelsReport
from handlers.errors import (
    InsufficientResourcesError,
    ModelNotFoundError,
    ModelNotReadyError,
    RaytorchError,
)
from handlers.explain_request import ExplainRequest
from handlers.tensor_data import TensorRequest

logger = logging.getLogger("ray.serve")
LOAD_FAILED_RETRY_AFTER_S = 5.0
# Errors that already say what a client should know; any other load failure becomes a 503.
_PLAIN_ERRORS = (ModelNotFoundError, ModelNotReadyError, InsufficientResourcesError)
# What nearly every model a pool loads imports, and what its first load would otherwise pay:
# torchvision's models pull in torch._dynamo through torchvision.ops (2-5 s on a 2-core VM,
# measured with py-spy in the replica during a first registration: most of a 4.7 s
# `POST /models` into a pool).
PREIMPORTS = ("torchvision.models",)


def _preimport() -> None:
    for module in PREIMPORTS:
        with contextlib.suppress(Exception):  # a model that needs it fails with its own error
            importlib.import_module(module)


@serve.deployment(**REPLICA_OPTIONS)
class PoolDeployment:
    """Loads pooled models on demand, decodes each request alone, runs one model per batch."""

    def __init__(self, args: PoolArgs, placement_note: str | None = None) -> None:
        if placement_note:
            logger.warning(placement_note)
        self._args = args
        context = serve.get_replica_context()
        self._replica = context.replica_tag
        self._executor = InferenceExecutor(f"pool-{args.name}", args.torch_threads)
        self._decoders = decode_pool(max(2, machine_cores()))
        self._management: Any = None
        self._loader = PooledLoader(args.name, self._spec_of, self._executor, args.model_overhead_mb)
        self._cache = ModelCache(
            int(args.memory_budget_mb * MIB),
            args.max_models_per_replica,
            self._loader,
            LoadedModelsReport(context.replica_id).changed,
            estimate=self._loader.estimate,
            gate=ColdLoadGate(args.name, args.cold_loads_per_s, args.cold_load_burst),
        )
        self._explaining = asyncio.Semaphore(EXPLANATIONS_AT_ONCE)
        self._idle = asyncio.Event()  # set while no batch runs; see BatchingConfig.wait_for_idle_model
        self._idle.set()
        self._wait_for_idle = True
        self._batching = args.batching
        # On a thread, so the replica answers at once; a load that starts meanwhile waits for
        # the import in progress (the import lock) instead of doing it again.
        threading.Thread(target=_preimport, name="pool-preimport", daemon=True).start()
        logger.info(
            "Pool %s replica %s ready: memory budget %.0f MB, at most %s models",
            args.name,
            self._replica,
            args.memory_budget_mb,
            args.max_models_per_replica or "any number of",
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings from YAML or a live config update, without a restart."""
        batching = self._batching = BatchingConfig.model_validate(user_config or {})
        self._run_batch.set_max_batch_size(batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._wait_for_idle = batching.wait_for_idle_model

    async def _spec_of(self, model_id: str) -> dict[str, Any] | None:
        if self._management is None:
            self._management = serve.get_deployment_handle(MANAGEMENT_DEPLOYMENT, app_name=MANAGEMENT_APP)
        try:
            return await self._management.pooled_spec.remote(model_id)
        except Exception:
            self._management = None  # a new handle once the management app is back
            raise

    async def _model(self, model_id: str) -> tuple[LoadedModel, LoadOutcome | None]:
        if not model_id:
            raise ModelNotFoundError(f"Pool {self._args.name} was called without a model id")
        try:
            return await self._cache.get(model_id)
        except _PLAIN_ERRORS:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, RaytorchError) else f"{type(exc).__name__}: {exc}"
            model, version = parse_pooled_model_id(model_id) or (model_id, "?")
            logger.error(
                "Model %s version %s failed to load in pool %s: %s", model, version, self._args.name, reason
            )
            raise ModelNotReadyError(
                f'Model "{model}" version {version} failed to load in pool {self._args.name}: {reason}',
                retry_after_s=LOAD_FAILED_RETRY_AFTER_S,
            ) from None

    async def predict(
        self, body: bytes | TensorRequest, content_type: str | None = None
    ) -> Answer | Rejected:
        """Answer one input (encoded bytes, or an Open Inference request's tensors) for the
        request's model (its multiplexed model id)."""
        started = time.perf_counter()
        model_id = serve.get_multiplexed_model_id()
        try:
            model, outcome = await self._model(model_id)
            ready = time.perf_counter()
            loop = asyncio.get_running_loop()
            handler = model.handler
            if isinstance(body, TensorRequest):
                item = await loop.run_in_executor(self._decoders, handler.preprocess_tensors, body)
            else:
                item = await loop.run_in_executor(self._decoders, handler.preprocess, body, content_type)
            queued = time.perf_counter()
            if self._wait_for_idle:
                await self._idle.wait()
            answer = await self._run_batch((model, item, queued))
        except Exception as exc:  # this input's own answer, never its batch-mates' failure
            return rejection(exc, (parse_pooled_model_id(model_id) or (model_id, ""))[0])
        answer.timings["preprocess_s"] = queued - ready
        if outcome is None:
            return answer
        answer.timings["load_s"] = ready - started
        return dataclasses.replace(
            answer, pool_event=PoolEvent(self._args.name, outcome.seconds, outcome.evicted)
        )

    async def predict_many(
        self, inputs: list[tuple[bytes | TensorRequest, str | None]]
    ) -> list[Answer | Rejected]:
        """Answer a group of inputs for one model sent in one call (the ingress groups the
        inputs that arrive together); each is decoded and batched on its own."""
        return await asyncio.gather(*(self.predict(body, content_type) for body, content_type in inputs))

    async def explain_many(
        self, inputs: list[tuple[bytes, str | None]], request: ExplainRequest
    ) -> list[Answer | Rejected]:
        """Explain each input for the request's model, as a dedicated replica does
        (:func:`deployments.model.stepwise.explain_one`): chunk by chunk between batches."""
        model_id = serve.get_multiplexed_model_id()
        try:
            model, _ = await self._model(model_id)
        except Exception as exc:
            return [rejection(exc, (parse_pooled_model_id(model_id) or (model_id, ""))[0])] * len(inputs)
        explain = partial(explain_one, model.handler, self._executor, self._decoders, self._explaining)
        return await asyncio.gather(*(explain(body, kind, request) for body, kind in inputs))

    async def predict_stream(self, body: bytes, content_type: str | None = None) -> AsyncIterator[Any]:
        """The request's model's partial answers to one input as they come (a Serve streaming
        call), as a dedicated replica streams them (:func:`deployments.model.stepwise.stream_one`)."""
        model_id = serve.get_multiplexed_model_id()
        try:
            model, _ = await self._model(model_id)
        except Exception as exc:
            yield rejection(exc, (parse_pooled_model_id(model_id) or (model_id, ""))[0])
            return
        async for part in stream_one(model.handler, self._executor, self._decoders, body, content_type):
            yield part

    async def signature(self) -> dict[str, Any]:
        """The request's model's inputs, outputs and platform as Open Inference metadata
        (loading the model when this replica lacks it)."""
        model, _ = await self._model(serve.get_multiplexed_model_id())
        return {**model.handler.signature(), "handler": model.handler.spec.handler}

    async def describe_handler(self) -> Any:
        """The request's model's handler's description of itself (describe with
        ``customized=true``; loads the model when this replica lacks it)."""
        model, _ = await self._model(serve.get_multiplexed_model_id())
        described = await asyncio.get_running_loop().run_in_executor(self._decoders, model.handler.describe)
        return described if not isinstance(described, dict) else {**described, "pool": self._args.name}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def _run_batch(self, entries: list[tuple[LoadedModel, Any, float]]) -> list[Answer]:
        batch_started = time.perf_counter()
        # Serve splits batches by model id already; grouping again keeps any mix correct.
        groups: dict[str, list[int]] = {}
        for index, (model, _, _) in enumerate(entries):
            groups.setdefault(model.model_id, []).append(index)
        results: list[Any] = [None] * len(entries)
        sizes = [0] * len(entries)
        self._idle.clear()
        try:
            for indices in groups.values():
                handler = entries[indices[0]][0].handler
                outputs = await self._executor.run_batch(
                    handler.predict_batch, [entries[i][1] for i in indices], inputs=len(indices)
                )
                for index, output in zip(indices, outputs, strict=True):
                    results[index], sizes[index] = output, len(indices)
        finally:
            self._idle.set()
        inference_s = time.perf_counter() - batch_started
        return [
            Answer(
                result,
                size,
                timings={"queue_s": batch_started - queued, "inference_s": inference_s},
                load_seconds=model.load_seconds,
            )
            for result, size, (model, _, queued) in zip(results, sizes, entries, strict=True)
        ]

    async def validate(self, model_id: str, spec: dict[str, Any]) -> dict[str, float]:
        """Load a model once without keeping it: a registration's check that it loads and fits
        the budget (raises the load's error). Returns its load seconds and size in MB."""
        model = await self._loader.load(model_id, spec)
        if model.size_bytes > self._cache.budget_bytes:
            raise InsufficientResourcesError(
                f"The model needs about {model.size_bytes / MIB:.1f} MB, more than pool "
                f"{self._args.name}'s memory budget per replica ({self._args.memory_budget_mb:g} MB): "
                "raise memory_budget_mb or register it as a dedicated deployment (dedicated=true)"
            )
        return {"load_seconds": model.load_seconds, "size_mb": model.size_bytes / MIB}

    def unload(self, model_id: str) -> bool:
        """Drop an unregistered model (broadcast to every replica); True when it was loaded."""
        return self._cache.evict(model_id)

    def report(self) -> dict[str, Any]:
        """This replica's models and budget (broadcast by describe and /metrics)."""
        return {
            "replica": self._replica,
            "models": self._cache.loaded_ids(),
            "used_bytes": self._cache.used_bytes,
            "budget_bytes": self._cache.budget_bytes,
            "loads": self._cache.loads,
            "evictions": self._cache.evictions,
            "max_batch_size": self._batching.max_batch_size,
            "batch_wait_timeout_s": self._batching.batch_wait_timeout_s,
        }
