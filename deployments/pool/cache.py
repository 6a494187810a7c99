"""The models one pool replica holds: loaded on demand by model id, least recently used evicted
first under a memory budget (and an optional count limit).

Serve's ``@serve.multiplexed`` keeps a fixed number of models per replica; a pool of models of
different sizes needs a memory budget instead, so the replica keeps its models here. Concurrent
requests for a model that is loading share one load, and a load is never abandoned because the
request that started it was cancelled. A model that failed to load is not retried for a few
seconds, so a broken archive cannot make every request reload it.

Before a cold load, the replica's ration of cold loads is checked (admission.ColdLoadGate: a
request over it gets 503 at once and evicts nothing), then room is made for the model's
estimated size (its size measured at its last load here, else its weight files), so the replica
stays within its budget while loading; a model measured bigger than the budget is refused
without loading it again. No Ray, no torch: the loader is a function.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deployments.common.naming import parse_pooled_model_id
from deployments.pool.admission import ColdLoadGate
from handlers.errors import InsufficientResourcesError

MIB = 1024 * 1024
FAILURE_TTL_S = 5.0


@dataclass
class LoadedModel:
    """A model ready to serve: its handler and what it counts against the budget."""

    model_id: str
    handler: Any
    size_bytes: int
    load_seconds: float


@dataclass(frozen=True)
class LoadOutcome:
    """What the request that started a cold load learns: how long it took, what it evicted."""

    seconds: float
    evicted: tuple[str, ...]


def _label(model_id: str) -> str:
    parsed = parse_pooled_model_id(model_id)
    return f'Model "{parsed[0]}" version {parsed[1]}' if parsed else f"Model {model_id}"


class ModelCache:
    """Loaded models of one replica, in least-recently-used order.

    ``load(model_id)`` builds a :class:`LoadedModel`; ``on_change(ids)`` hears the ids loaded or
    loading after every change (for Serve's routing: requests go where their model is).
    """

    def __init__(
        self,
        budget_bytes: int,
        max_models: int | None,
        load: Callable[[str], Awaitable[LoadedModel]],
        on_change: Callable[[list[str]], None] | None = None,
        failure_ttl_s: float = FAILURE_TTL_S,
        *,
        estimate: Callable[[str], Awaitable[int]] | None = None,
        gate: ColdLoadGate | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self._load = load
        self._on_change = on_change
        self._failure_ttl_s = failure_ttl_s
        self._estimate = estimate
        self._gate = gate
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[tuple[LoadedModel, tuple[str, ...]]]] = {}
        self._failed: dict[str, tuple[float, Exception]] = {}
        self._sizes: dict[str, int] = {}  # measured at each model's last load here
        self._reserved = 0  # room promised to the loads under way
        self.used_bytes = 0
        self.loads = 0
        self.evictions = 0

    async def get(self, model_id: str) -> tuple[LoadedModel, LoadOutcome | None]:
        """The model, loading it first when needed. The outcome is set only for the request
        that started the load (the one whose latency includes it)."""
        entry = self._models.get(model_id)
        if entry is not None:
            self._models.move_to_end(model_id)
            return entry, None
        pending = self._loading.get(model_id)
        if pending is not None:
            return (await asyncio.shield(pending))[0], None
        failure = self._failed.get(model_id)
        if failure is not None and failure[0] > time.monotonic():
            raise failure[1]
        if self._gate is not None:  # before anything is evicted or loaded
            self._gate.admit(_label(model_id), len(self._loading))
        started = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._load_and_admit(model_id))
        # Read its outcome even when every request waiting for it was cancelled (no warning).
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._loading[model_id] = task
        self._changed()
        entry, evicted = await asyncio.shield(task)
        return entry, LoadOutcome(time.monotonic() - started, evicted)

    async def _load_and_admit(self, model_id: str) -> tuple[LoadedModel, tuple[str, ...]]:
        reserved = 0
        try:
            size = self._sizes.get(model_id)
            if size is not None and size > self.budget_bytes:  # known too big: do not load it again
                raise self._too_big(model_id, size)
            if size is None and self._estimate is not None:
                size = min(await self._estimate(model_id), self.budget_bytes)
            # Room first, so that the replica never holds more than its budget while loading.
            reserved = size or 0
            evicted = self._make_room(reserved)
            if evicted:
                self._changed()
            self._reserved += reserved
            try:
                entry = await self._load(model_id)
            finally:
                self._reserved -= reserved
            self._sizes[model_id] = entry.size_bytes
            evicted += self._admit(entry)
        except Exception as exc:
            now = time.monotonic()
            self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
            self._failed[model_id] = (now + self._failure_ttl_s, exc)
            raise
        finally:
            del self._loading[model_id]
            self._changed()
        self._failed.pop(model_id, None)
        return entry, evicted

    def _too_big(self, model_id: str, size: int) -> InsufficientResourcesError:
        return InsufficientResourcesError(
            f"{_label(model_id)} needs about {size / MIB:.1f} MB, more than the "
            f"pool's memory budget per replica ({self.budget_bytes / MIB:.1f} MB): raise the pool's "
            "memory_budget_mb or register the model as a dedicated deployment (dedicated=true)"
        )

    def _make_room(self, size: int) -> tuple[str, ...]:
        """Evict least recently used models until ``size`` more bytes and one more model fit."""
        evicted = []
        while self._models and (
            self.used_bytes + self._reserved + size > self.budget_bytes
            or (self.max_models is not None and len(self._models) >= self.max_models)
        ):
            old_id, old = self._models.popitem(last=False)
            self.used_bytes -= old.size_bytes
            evicted.append(old_id)
        self.evictions += len(evicted)
        return tuple(evicted)

    def _admit(self, entry: LoadedModel) -> tuple[str, ...]:
        if entry.size_bytes > self.budget_bytes:
            raise self._too_big(entry.model_id, entry.size_bytes)
        evicted = self._make_room(entry.size_bytes)
        self._models[entry.model_id] = entry
        self.used_bytes += entry.size_bytes
        self.loads += 1
        return evicted

    def evict(self, model_id: str) -> bool:
        """Drop a model now (it was unregistered); False when it was not loaded. A batch that
        is running keeps its own reference and finishes."""
        self._failed.pop(model_id, None)
        self._sizes.pop(model_id, None)
        entry = self._models.pop(model_id, None)
        if entry is None:
            return False
        self.used_bytes -= entry.size_bytes
        self._changed()
        return True

    def loaded_ids(self) -> list[str]:
        """Ids of the loaded models, least recently used first."""
        return list(self._models)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change([*self._models, *self._loading])
