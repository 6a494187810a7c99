"""``ts.handler_utils.micro_batching``: TorchServe's micro-batching handle, written anew.

A handler sets ``self.handle = MicroBatching(self)``: each batch is cut into micro-batches of
``micro_batch_size`` requests, which flow through the handler's ``preprocess``, ``inference``
and ``postprocess``, each step with its own threads (``parallelism``), so one micro-batch's
preprocessing overlaps another's inference. The answers come back in the batch's order.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

HANDLER_METHODS = ("preprocess", "inference", "postprocess")


class MicroBatching:
    """A callable ``handle(data, context)`` that runs the parent handler's steps in micro-batches."""

    def __init__(
        self, parent_handler: Any, micro_batch_size: int = 1, parallelism: dict[str, int] | None = None
    ) -> None:
        self.handler = parent_handler
        self.micro_batch_size = micro_batch_size
        self._parallelism: dict[str, int] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self.thread_local_data = threading.local()
        self.parallelism = parallelism or {}

    @property
    def parallelism(self) -> dict[str, int]:
        """Threads per step (``preprocess``, ``inference``, ``postprocess``; 1 when not set)."""
        return dict(self._parallelism)

    @parallelism.setter
    def parallelism(self, parallelism: dict[str, int]) -> None:
        unknown = set(parallelism) - set(HANDLER_METHODS)
        if unknown:
            raise ValueError(
                f"micro_batching parallelism: unknown steps {sorted(unknown)}; use {HANDLER_METHODS}"
            )
        if any(not isinstance(n, int) or n < 1 for n in parallelism.values()):
            raise ValueError(
                f"micro_batching parallelism: thread counts must be integers >= 1, got {parallelism}"
            )
        self._parallelism.update(parallelism)
        self.shutdown()
        self._pools = {
            step: ThreadPoolExecutor(self._parallelism.get(step, 1), thread_name_prefix=f"micro-batch-{step}")
            for step in HANDLER_METHODS
        }

    def shutdown(self) -> None:
        """Stop the step threads (they are started again by setting ``parallelism``)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False)

    def get_micro_batch_idx(self) -> int | None:
        """The index of the micro-batch the calling step thread works on."""
        return getattr(self.thread_local_data, "micro_batch_idx", None)

    def _step(self, step: str, idx: int, previous: Future | list[Any]) -> Any:
        self.thread_local_data.micro_batch_idx = idx
        data = previous.result() if isinstance(previous, Future) else previous
        return getattr(self.handler, step)(data)

    def handle(self, data: list[Any]) -> list[Any]:
        """Run ``data`` through the three steps in micro-batches; one answer per request, in order."""
        size = max(1, int(self.micro_batch_size))
        futures = []
        for idx, start in enumerate(range(0, len(data), size)):
            stage: Any = data[start : start + size]
            for step in HANDLER_METHODS:
                stage = self._pools[step].submit(self._step, step, idx, stage)
            futures.append(stage)
        return [answer for future in futures for answer in future.result()]

    def __call__(self, data: list[Any], context: Any) -> list[Any]:
        """The handler's entry point: describe, or the micro-batched steps, timed as ``HandlerTime``."""
        started = time.time()
        self.handler.context = context
        output = [self.handler.describe_handle()] if self.handler._is_describe() else self.handle(data)
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return output
