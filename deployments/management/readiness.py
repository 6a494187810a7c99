"""Waiting for a registered version's replicas, with our own deadline, and telling the
ingresses once they are up. No Ray here: Serve is reached through the Serve control."""

from __future__ import annotations

import asyncio
import contextlib

from deployments.common.model_table import ModelTable
from deployments.management.routing_feed import RoutingFeed
from deployments.management.serve_control import Serve
from handlers.errors import ModelLoadError, RequestTimeoutError


class Readiness:
    """``wait`` for a version's workers (a synchronous register), or ``watch`` in the background
    (an asynchronous one, a restored one); either announces the ready version."""

    def __init__(self, serve: Serve, feed: RoutingFeed, timeout_s: float) -> None:
        self.serve, self.feed, self.timeout_s = serve, feed, timeout_s
        self._watchers: set[asyncio.Task[None]] = set()

    async def wait(self, model: str, version: str, timeout_s: float, workers: int = 1) -> None:
        """Return once ``workers`` replicas are up (just the application, for 0), and tell the
        ingresses; raise with Serve's reason when the model fails to load."""
        message = ""

        def ready(table: ModelTable) -> bool:
            nonlocal message
            state = table.versions.get(model, {}).get(version)
            if state is None:
                return False
            message = state.message
            if state.app_status == "DEPLOY_FAILED":
                raise ModelLoadError(f'Model "{model}" version {version} failed to load: {message}')
            if workers == 0:
                return state.app_status == "RUNNING"
            return state.ready and state.running_replicas >= workers

        try:
            await self.serve.wait_until(ready, timeout_s, f'Model "{model}" version {version} was not ready')
        except RequestTimeoutError as exc:
            raise RequestTimeoutError(f"{exc.message}: {message}" if message else exc.message) from None
        self.feed.announce()

    def watch(self, model: str, version: str) -> None:
        """:meth:`wait` in the background (failures show in describe and /ping)."""

        async def watch() -> None:
            with contextlib.suppress(Exception):
                await self.wait(model, version, self.timeout_s)

        task = asyncio.get_running_loop().create_task(watch())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
