"""One async call's result, shared by the callers that arrive while it runs and reused for a
short while, so a flood of requests costs one call per ``ttl_s``, not one per request. No Ray."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CachedCall(Generic[T]):
    """``await cached.get()``: ``call()``'s latest result while it is younger than ``ttl_s``;
    otherwise one new call, awaited by every caller meanwhile. Failures are not kept."""

    def __init__(self, call: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._call = call
        self.ttl_s = ttl_s
        self._result: tuple[float, T] | None = None
        self._running: asyncio.Task[T] | None = None

    async def get(self) -> T:
        """The cached result, or a fresh one."""
        if self._result is not None and time.monotonic() - self._result[0] < self.ttl_s:
            return self._result[1]
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._refresh())
        # Shielded: a caller that gives up (its client left) does not cancel the others' call.
        return await asyncio.shield(self._running)

    async def _refresh(self) -> T:
        started = time.monotonic()
        try:
            value = await self._call()
            self._result = (started, value)
            return value
        finally:
            self._running = None
