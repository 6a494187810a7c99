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
from typing import Any, Protocol

from deployments.common.model_table import ModelTable
from deployments.common.ray_private import delete_application, ongoing_requests_calls, serve_details
from deployments.common.settings import ModelAppArgs
from deployments.management.describe import DeploymentFacts, ReplicaFacts
from handlers.errors import RequestTimeoutError

# A synchronous register returns as soon as the replica is up; each poll is one serve.status()
# (~15 ms of CPU), so faster polling would slow the very replica start it waits for.
READY_POLL_S = 0.2
# Describe asks each replica how many requests it holds; a busy or dying one must not stall it.
FACTS_TIMEOUT_S = 2.0


# A config file's application is built (its import path run) before its deployments appear.
BUILDING = ("NOT_STARTED", "DEPLOYING")


@dataclass(frozen=True)
class ServeSnapshot:
    """Applications (name -> status) and the model versions they hold, at one moment;
    ``building``: applications whose deployments (so whose model versions) are not known yet."""

    apps: dict[str, str]
    table: ModelTable
    building: frozenset[str] = frozenset()


class Serve(Protocol):
    """What the management part needs of Ray Serve (:class:`ServeControl`; tests use a fake)."""

    async def snapshot(self) -> ServeSnapshot: ...
    async def deploy(self, app_name: str, args: ModelAppArgs) -> None: ...
    async def delete(self, app_name: str) -> None: ...
    async def resources(self) -> tuple[dict[str, float], float]: ...
    async def wait_until(self, done: Any, timeout_s: float, what: str, poll_s: float = ...) -> None: ...
    async def deployment_facts(self, app_name: str, deployment_name: str) -> DeploymentFacts | None: ...
    async def handler_metadata(
        self, app_name: str, deployment_name: str, timeout_s: float, model_id: str = ""
    ) -> Any: ...


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
        from deployments.model.builder import model_application

        await start_application(model_application(args), app_name)

    async def delete(self, app_name: str) -> None:
        """Start deleting an application; returns without waiting for it to be gone."""
        await asyncio.to_thread(delete_application, app_name, False)

    async def resources(self) -> tuple[dict[str, float], float]:
        """Resources free now, and the cluster's GPU total."""
        import ray

        available = await asyncio.to_thread(ray.available_resources)
        total = await asyncio.to_thread(ray.cluster_resources)
        return available, float(total.get("GPU", 0.0))

    async def deployment_facts(self, app_name: str, deployment_name: str) -> DeploymentFacts | None:
        """A deployment's replicas and settings, and the requests its replicas hold now (for
        describe). From the controller's details, the source of ``serve status`` itself."""
        details = await asyncio.to_thread(serve_details)
        deployment = ((details.get("applications") or {}).get(app_name) or {}).get("deployments", {})
        deployment = deployment.get(deployment_name)
        if deployment is None:
            return None
        config = deployment.get("deployment_config") or {}
        raw = deployment.get("replicas") or []

        def state(replica: dict) -> str:  # an enum here; its value in Serve's JSON
            return str(getattr(replica.get("state"), "value", replica.get("state")))

        replicas = [
            ReplicaFacts(r["replica_id"], state(r), r.get("pid"), r.get("start_time_s"), r.get("node_ip"))
            for r in raw
        ]
        running = [r["actor_name"] for r in raw if state(r) == "RUNNING" and r.get("actor_name")]
        return DeploymentFacts(
            replicas,
            config.get("max_ongoing_requests"),
            dict(config.get("user_config") or {}),
            float((config.get("ray_actor_options") or {}).get("num_gpus") or 0),
            await self._ongoing_requests(running),
        )

    async def _ongoing_requests(self, actor_names: list[str]) -> int | None:
        try:
            calls = await asyncio.to_thread(ongoing_requests_calls, actor_names)
            counts = await asyncio.wait_for(asyncio.gather(*calls), FACTS_TIMEOUT_S)
        except Exception:  # a replica stopping meanwhile: the count is unknown, not an error
            return None
        return int(sum(counts))

    async def handler_metadata(
        self, app_name: str, deployment_name: str, timeout_s: float, model_id: str = ""
    ) -> Any:
        """What the version's handler says of itself (``describe()`` on one of its replicas;
        for a pooled version, ``model_id``, on a pool replica that loads it if needed)."""
        from ray import serve

        handle = serve.get_deployment_handle(deployment_name, app_name=app_name)
        if model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        return await asyncio.wait_for(handle.describe_handler.remote(), timeout_s)

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


async def start_application(application: Any, app_name: str) -> None:
    """Deploy (or update) ``application`` as ``app_name``, without a route and without waiting
    for it to run (``serve.run`` blocks forever when resources never arrive): callers watch its
    readiness with their own deadline."""
    from ray import serve
    from ray.serve import RunTarget

    target = RunTarget(target=application, name=app_name, route_prefix=None)
    await asyncio.to_thread(
        serve.run_many,
        [target],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
