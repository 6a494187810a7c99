"""Keeps the ingress's table of model versions current, cheaply.

Sources, from most to least frequent:
- a lookup of a known model without a ready replica takes a snapshot requested after it arrived,
  and the routing changes made before it, so a version that just became ready is found; such
  forced snapshots are shared by all waiting requests and at most one per
  ``MIN_FORCED_REFRESH_GAP_S`` is taken;
- a lookup of an unknown name reads the routing changes made before it arrived (shared the same
  way), and takes a snapshot only when they say something changed that the table does not show
  yet, or when the table is older than ``UNKNOWN_NAME_MAX_AGE_S``: every model that can appear
  is announced, so made-up names cost at most one ``serve.status()`` a second, not ten;
- the management part announces every routing change (register, ready, set-default, removal,
  pooled versions, traffic policies) through a long poll; the directory takes a snapshot at once
  when the change touched Serve's applications, and otherwise only updates the models it names
  (registering a pooled model costs no snapshot);
- health routes (/ping, readiness, /metrics) take a snapshot when the last one is over
  ``HEALTH_MAX_AGE_S`` old, so they tell the truth without a fast background poll;
- a slow safety poll (``discovery_interval_s``) catches what nobody announced.

An idle server thus asks Serve for its status every ``discovery_interval_s`` instead of every
second. Snapshots come from a function (``serve.status`` in production), fakes in tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from deployments.common.model_table import ModelTable
from deployments.common.routing import RoutingState, RoutingUpdate

logger = logging.getLogger("ray.serve")

MIN_FORCED_REFRESH_GAP_S = 0.1
HEALTH_MAX_AGE_S = 1.0
UNKNOWN_NAME_MAX_AGE_S = 1.0
LONG_POLL_TIMEOUT_S = 30.0
RETRY_AFTER_FAILURE_S = 2.0
MAX_RETRY_AFTER_FAILURE_S = 30.0

Snapshot = Callable[[], Awaitable[ModelTable]]
RoutingChanges = Callable[[int, float, str], Awaitable[RoutingUpdate]]


class ModelDirectory:
    """The latest :class:`ModelTable`, with the policies above for refreshing it.

    ``snapshot()`` returns a table of what Serve runs; ``routing_changes(since, timeout, epoch)``
    long polls the management part (None when there is no management app).
    """

    def __init__(
        self,
        snapshot: Snapshot,
        routing_changes: RoutingChanges | None,
        safety_interval_s: float,
        on_change: Callable[[ModelTable], None] | None = None,
    ) -> None:
        self.table = ModelTable()
        self._snapshot = snapshot
        self._routing_changes = routing_changes
        self._safety_interval_s = safety_interval_s
        self._on_change = on_change
        self.routing = RoutingState()
        self._taken_at = -1.0  # when the latest completed snapshot was requested
        self._checked_at = -1.0  # when the latest check for an unknown name was requested
        self._table_routing: tuple[str, int] = ("", 0)  # the routing the table was built with
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Take a first snapshot and start following changes (idempotent)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._safety_poll()))
        if self._routing_changes is not None:
            self._tasks.append(loop.create_task(self._follow_routing()))
        try:
            await self.refresh()
        except Exception:  # Serve may still be starting; the polls retry
            logger.exception("First snapshot of the model table failed")

    async def refresh(self) -> None:
        """Take a fresh snapshot now."""
        async with self._lock:
            await self._take()

    async def refresh_since(self, arrived: float) -> None:
        """Return once the table reflects a snapshot requested after ``arrived``."""
        async with self._lock:
            if self._taken_at >= arrived:
                return  # someone else's snapshot, taken while we waited for the lock
            await asyncio.sleep(max(0.0, self._taken_at + MIN_FORCED_REFRESH_GAP_S - time.monotonic()))
            await self._take(pull_routing=True)

    async def refresh_for_unknown(self, arrived: float) -> None:
        """Return once the table reflects every routing change made before ``arrived`` (for a
        name it does not know), taking a snapshot only when needed (see the module docstring)."""
        async with self._lock:
            if max(self._taken_at, self._checked_at) >= arrived:
                return  # a check or snapshot requested after this lookup arrived: it is enough
            await asyncio.sleep(
                max(0.0, max(self._taken_at, self._checked_at) + MIN_FORCED_REFRESH_GAP_S - time.monotonic())
            )
            started = time.monotonic()
            await self._pull_routing()
            behind = self._table_routing != (self.routing.epoch, self.routing.version)
            if behind or started - self._taken_at > UNKNOWN_NAME_MAX_AGE_S:
                await self._take()
            self._checked_at = started

    async def fresh_for_health(self) -> ModelTable:
        """The table, no older than ``HEALTH_MAX_AGE_S`` (for /ping and readiness)."""
        now = time.monotonic()
        if now - self._taken_at > HEALTH_MAX_AGE_S:
            try:
                await self.refresh_since(now - HEALTH_MAX_AGE_S)
            except Exception:
                logger.exception("Refreshing the model table for a health check failed")
        return self.table

    async def _pull_routing(self) -> None:
        """Take in what changed before now (a model just registered), without waiting."""
        if self._routing_changes is None:
            return
        try:
            self.routing.apply(await self._routing_changes(self.routing.version, 0.0, self.routing.epoch))
        except Exception as exc:  # the long poll will catch up; Serve's view is still worth having
            logger.debug("Could not read routing changes of the management app: %s", exc)

    async def _take(self, pull_routing: bool = False) -> None:
        started = time.monotonic()
        if pull_routing:
            await self._pull_routing()
        routing = (self.routing.epoch, self.routing.version)
        table = await self._snapshot()
        table.apply_routing(self.routing)
        self.table = table
        self._taken_at = started
        self._table_routing = routing
        if self._on_change is not None:
            self._on_change(table)

    async def _safety_poll(self) -> None:
        while True:
            await asyncio.sleep(self._safety_interval_s)
            try:
                await self.refresh()
            except Exception:  # keep polling; the next round may succeed
                logger.exception("Refreshing the model table failed")

    async def _follow_routing(self) -> None:
        assert self._routing_changes is not None
        backoff = RETRY_AFTER_FAILURE_S
        while True:
            try:
                update = await self._routing_changes(
                    self.routing.version, LONG_POLL_TIMEOUT_S, self.routing.epoch
                )
            except Exception as exc:  # management restarting (or absent): keep the routing, retry
                level = logging.WARNING if backoff == RETRY_AFTER_FAILURE_S else logging.DEBUG
                logger.log(level, "Could not follow routing changes of the management app: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(MAX_RETRY_AFTER_FAILURE_S, backoff * 2)
                continue
            backoff = RETRY_AFTER_FAILURE_S
            before = (self.routing.epoch, self.routing.version)
            changed = self.routing.apply(update)
            if changed is None:
                continue
            if not (update.full or update.serve):
                self.table.update_models(self.routing, changed)
                if self._table_routing == before:  # the table was current: it still is
                    self._table_routing = (self.routing.epoch, self.routing.version)
                if self._on_change is not None:
                    self._on_change(self.table)
                continue
            try:
                await self.refresh()
            except Exception:
                logger.exception("Refreshing the model table after a routing change failed")

    def stop(self) -> None:
        """Stop following changes."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
