"""The Serve calls the management part makes: snapshot, deploy, delete, wait, resources.

Blocking Serve APIs run off the event loop; every wait has our own deadline (Serve would wait
forever for resources that never come). :class:`deployments.management.manager.ModelManager`
takes any object with these methods, so its tests use a fake Serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from deployments.common.model_table import ModelTable
from deployments.common.settings import ModelAppArgs
from handlers.errors import RequestTimeoutError

# A synchronous register returns as soon as the replica is up; each poll is one serve.status()
# (~15 ms of CPU), so faster polling would slow the very replica start it waits for.
READY_POLL_S = 0.2


# A config file's application is built (its import path run) before its deployments appear.
BUILDING = ("NOT_STARTED", "DEPLOYING")


@dataclass(frozen=True)
class ServeSnapshot:
    """Applications (name -> status) and the model versions they hold, at one moment;
    ``building``: applications whose deployments (so whose model versions) are not known yet."""

    apps: dict[str, str]
    table: ModelTable
    building: frozenset[str] = frozenset()


class ServeControl:
    """Ray Serve as the management part uses it."""

    async def snapshot(self) -> ServeSnapshot:
        """Applications and model versions, from one ``serve.status()``."""
        from ray import serve

        status = await asyncio.to_thread(serve.status)
        apps = {name: str(app.status.value) for name, app in status.applications.items()}
        building = frozenset(
            name
            for name, app in status.applications.items()
            if apps[name] in BUILDING and not app.deployments
        )
        return ServeSnapshot(apps, ModelTable.from_status(status.applications), building)

    async def deploy(self, app_name: str, args: ModelAppArgs) -> None:
        """Deploy (or update) a model application without waiting for it."""
        from ray import serve
        from ray.serve import RunTarget

        from deployments.model.builder import model_application

        target = RunTarget(target=model_application(args), name=app_name, route_prefix=None)
        await asyncio.to_thread(
            serve.run_many,
            [target],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    async def delete(self, app_name: str) -> None:
        """Start deleting an application; returns without waiting for it to be gone."""
        from ray import serve

        await asyncio.to_thread(serve.delete, app_name, _blocking=False)

    async def resources(self) -> tuple[dict[str, float], float]:
        """Resources free now, and the cluster's GPU total."""
        import ray

        available = await asyncio.to_thread(ray.available_resources)
        total = await asyncio.to_thread(ray.cluster_resources)
        return available, float(total.get("GPU", 0.0))

    async def wait_until(
        self, done: Callable[[ModelTable], bool], timeout_s: float, what: str, poll_s: float = READY_POLL_S
    ) -> None:
        """Poll snapshots until ``done(table)`` is true (it may raise to stop early); 504 after
        ``timeout_s`` naming ``what``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done((await self.snapshot()).table):
                return
            await asyncio.sleep(poll_s)
        raise RequestTimeoutError(f"{what} within {timeout_s:g}s")
