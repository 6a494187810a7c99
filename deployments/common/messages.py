"""What a model deployment sends back to the ingress for one request (plain, picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handlers.errors import RaytorchError


@dataclass(frozen=True)
class PoolEvent:
    """What a pool replica did for one request besides answering it: the cold load it waited
    for and the models it evicted to make room (the ingress counts them per model)."""

    pool: str
    load_seconds: float | None = None
    evicted: tuple[str, ...] = ()  # pooled model ids


@dataclass(frozen=True)
class Answer:
    """A prediction, the size of the batch it ran in and the version that answered.

    Sent to clients as the ``x-batch-size`` and ``x-model-version`` headers.
    """

    result: Any
    batch_size: int
    version: str = ""
    # Seconds spent per stage in the replica: preprocess, queue (waiting for a batch), inference.
    timings: dict[str, float] = field(default_factory=dict)
    load_seconds: float | None = None
    pool_event: PoolEvent | None = None
    # What the handler emitted through TorchServe's context.metrics since the last batch
    # (handlers.torchserve.ts_api.metrics.MetricRecord), on one answer of the batch.
    handler_metrics: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """A request refused on purpose (bad input, limits): returned, not raised.

    Raising would make Ray log a traceback per bad request and wrap the error in a
    RayTaskError; the ingress turns this into the error's HTTP status instead.
    """

    error: RaytorchError
