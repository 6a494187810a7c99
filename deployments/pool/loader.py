"""How a pool replica turns a model id into a loaded model: the spec from the management part,
the handler built from it, loaded on the replica's inference thread, and its memory estimate.

The management part is the one owner of registrations (its state store on the head node), so a
replica asks it for a model's spec when it first needs the model; nothing about a pooled model
lives in Serve or in the replica until then.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from deployments.model.executor import InferenceExecutor
from deployments.pool.admission import weights_bytes
from deployments.pool.cache import MIB, LoadedModel
from handlers.errors import ModelNotFoundError, ModelNotReadyError, RaytorchError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec

SPEC_TIMEOUT_S = 10.0
SPEC_RETRY_AFTER_S = 2.0

SpecSource = Callable[[str], Awaitable[dict[str, Any] | None]]


def model_bytes(handler: Any) -> int:
    """Bytes of a loaded model's weights and buffers; for models without torch tensors (ONNX),
    the size of its files."""
    import torch

    model = getattr(handler, "model", None)
    total = 0
    if isinstance(model, torch.nn.Module):
        total = sum(
            t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())
        )
    base_dir = getattr(getattr(handler, "spec", None), "base_dir", None)
    if total == 0 and base_dir:
        total = sum(p.stat().st_size for p in Path(base_dir).rglob("*") if p.is_file())
    return total


class PooledLoader:
    """Loads pooled models for one replica (``specs(model_id)`` returns a ModelSpec as JSON, or
    None when no such registration exists)."""

    def __init__(self, pool: str, specs: SpecSource, executor: InferenceExecutor, overhead_mb: float) -> None:
        self.pool = pool
        self._specs = specs
        self._executor = executor
        self._overhead_bytes = int(overhead_mb * MIB)
        self._fetched: dict[str, dict[str, Any]] = {}

    async def estimate(self, model_id: str) -> int:
        """Bytes the model will need before it loads (the cache asks before a cold load): its
        weight files plus the overhead. Keeps the spec it fetched for the load that follows."""
        spec = self._fetched[model_id] = await self._spec(model_id)
        return await asyncio.to_thread(weights_bytes, spec.get("base_dir")) + self._overhead_bytes

    async def __call__(self, model_id: str) -> LoadedModel:
        """Fetch the spec (unless :meth:`estimate` just did) and load the model (the cache
        calls this on a miss)."""
        spec = self._fetched.pop(model_id, None)
        return await self.load(model_id, spec if spec is not None else await self._spec(model_id))

    async def _spec(self, model_id: str) -> dict[str, Any]:
        try:
            spec = await asyncio.wait_for(self._specs(model_id), SPEC_TIMEOUT_S)
        except RaytorchError:
            raise
        except Exception as exc:  # the management part is restarting, or unreachable
            cause = getattr(exc, "cause", None)  # its own refusals arrive wrapped by Ray
            if isinstance(cause, RaytorchError):
                raise cause from None
            raise ModelNotReadyError(
                f"Pool {self.pool} cannot look up model {model_id} now ({type(exc).__name__}); retry",
                retry_after_s=SPEC_RETRY_AFTER_S,
            ) from None
        if spec is None:
            raise ModelNotFoundError(f"Model {model_id} is not registered in pool {self.pool}")
        return spec

    async def load(self, model_id: str, spec: dict[str, Any]) -> LoadedModel:
        """Build and load the handler of ``spec`` on the inference thread."""
        started = time.perf_counter()
        # The pool decides the threads of every batch; a model's own setting would change them
        # for the whole process while it loads.
        model_spec = ModelSpec.model_validate(spec).model_copy(update={"torch_threads": None})
        handler = create_handler(model_spec)
        await self._executor.call_async(handler.load)
        seconds = time.perf_counter() - started
        return LoadedModel(model_id, handler, model_bytes(handler) + self._overhead_bytes, seconds)
