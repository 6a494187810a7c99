"""Register, scale, describe and unregister model versions as Serve applications at runtime.

Each registered version is an application ``<model>@<version>`` deployed without blocking;
readiness is awaited with our own deadline. Removal hides the version from the ingresses
first, waits for them to notice, and only then deletes the application, so no request is sent
into a deleting app. Versions registered into a model pool have no application: they are
handled by :mod:`deployments.management.pools`; defaults and traffic policies of every model by
:mod:`deployments.management.traffic`. Every routing change (a default, a version appearing or
being removed, a policy) is announced to the ingresses through
:meth:`ModelManager.routing_changes` (a long poll), so they need not poll Serve often. The steps
live beside it: accepting a registration (intake.py), describe and list (catalog.py), removal
(removal.py) and restoring at start (restore.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from deployments.common.environment import Environment
from deployments.common.management_args import ManagementArgs
from deployments.common.model_table import ModelTable
from deployments.common.naming import registered_app_name
from deployments.common.routing import RoutingUpdate
from deployments.common.settings import ModelAppArgs
from deployments.management.catalog import Catalog, not_found
from deployments.management.ingress_routing import IngressRouting
from deployments.management.intake import Intake
from deployments.management.pools import PoolCallsProtocol, PoolManager
from deployments.management.readiness import Readiness
from deployments.management.register_params import RegisterParams
from deployments.management.removal import VersionRemoval, version_to_remove
from deployments.management.restore import Restorer
from deployments.management.routing_feed import RoutingFeed
from deployments.management.serve_control import Serve
from deployments.management.state_records import VersionRecord
from deployments.management.state_store import StateStore
from deployments.management.traffic import TrafficControl
from handlers.errors import BadInputError, ModelLoadError, ModelNotFoundError

logger = logging.getLogger("ray.serve")
SCALE_POLL_S = 0.5


class ModelManager:
    """The management API's operations over Serve and the state store.

    Its parts, each built from the ones above it (nothing calls back into the manager): the
    state store, whose committed changes the routing feed announces to the ingresses; intake
    (archive, args, code policy, claims, resources); pools; removal; what the ingresses route on
    (routing); readiness; traffic; catalog.
    """

    def __init__(
        self, settings: ManagementArgs, serve: Serve, pool_calls: PoolCallsProtocol | None = None
    ) -> None:
        self.settings = settings
        self.serve = serve
        env = Environment()
        self.state_dir = Path(env.state_dir or settings.state_dir).resolve()
        self.model_store = Path(env.model_store or settings.model_store).resolve()
        self.models_dir = self.state_dir / "models"
        self.downloads_dir = self.state_dir / "downloads"
        self.store = StateStore(self.state_dir)
        self.feed = RoutingFeed()
        self.store.subscribe(self.feed.announce_models)  # every committed change reaches the ingresses
        self.intake = Intake(
            settings, self.model_store, self.models_dir, self.downloads_dir, self.store, serve
        )
        self._lock = asyncio.Lock()
        self.removal = VersionRemoval(serve, self.store, self.feed, self.models_dir, settings.propagation_s)
        if pool_calls is None:
            from deployments.common.pool_calls import PoolCalls

            pool_calls = PoolCalls()
        self.pools = PoolManager(
            settings, self.models_dir, pool_calls, self.intake, self.store, serve, self.feed
        )
        self.routing = IngressRouting(self.store, self.pools, self.removal, serve, self.feed)
        self.readiness = Readiness(serve, self.feed, settings.register_timeout_s)
        self.traffic = TrafficControl(self.store, self.routing, settings.propagation_s)
        self.catalog = Catalog(serve, self.store, settings.register_timeout_s, self.pools, self.traffic)

    async def routing_changes(self, since: int, timeout_s: float, epoch: str = "") -> RoutingUpdate:
        """What changed after version ``since``, as soon as something did, or after ``timeout_s``."""
        await self.feed.wait_past(since, timeout_s, epoch)
        return self.routing.update(since, epoch)

    # -- operations ----------------------------------------------------------------------------
    async def restore(self) -> list[str]:
        """Redeploy registered versions whose application is missing (after a restart); each
        on its own, retried, and never one that a config file's application already serves
        (see :class:`deployments.management.restore.Restorer`)."""
        restorer = Restorer(
            self.store, self.serve, self.models_dir, self.settings, self.routing, self.readiness,
            self.pools,
        )  # fmt: skip
        return await restorer.run()

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        """TorchServe's register: 200 when ready (synchronous) or 202 at once. The steps:
        resolve, unpack and check the archive, claim its version and check the cluster's
        resources (intake), record it (one transaction of the state store), deploy it, wait."""
        pool = self.pools.target(params)
        if pool is not None:
            return await self.pools.register(params, pool)
        args, entry = await self.intake.accept(params)
        name, version = args.model.name, args.model.version
        try:
            async with self._lock:
                await self.store.add(name, entry)
                await self.serve.deploy(entry.app_name, args)
        finally:
            self.intake.release(name, version)
        self.feed.announce()
        workers = args.resources.num_replicas
        if params.synchronous or workers == 0:  # no worker to wait for: TorchServe answers 200 at once
            # startup_timeout is about workers starting: with none, only the app's creation counts.
            timeout = params.startup_timeout
            if timeout is None or workers == 0:
                timeout = self.settings.register_timeout_s
            try:
                await self.readiness.wait(name, version, timeout, workers)
            except BaseException:
                await self._remove(name, version, drain=False)
                raise
        else:
            self.readiness.watch(name, version)
            return 202, {"status": "Processing worker updates..."}
        if workers == 0:
            return 200, {
                "status": f'Model "{name}" Version: {version} registered with 0 initial workers. '
                "Use scale workers API to add workers for the model."
            }
        return 200, {"status": f'Model "{name}" Version: {version} registered with {workers} initial workers'}

    async def scale(
        self, model: str, version: str | None, low: int, high: int, synchronous: bool
    ) -> tuple[int, dict]:
        """Set replicas (low == high) or an autoscaling range for a registered version."""
        _, table = await self.routing.table()
        self.pools.refuse_scaling(table, model, version)
        entry = await self._registered_or_explain(model, version)
        args = ModelAppArgs.model_validate(entry.args)
        resources = args.resources.model_copy(
            update={"num_replicas": low, "max_replicas": high if high > low else None}
        )
        extra = max(0, low - args.resources.num_replicas)
        args = args.model_copy(update={"resources": resources})
        if extra:
            await self.intake.resources.check(args, replicas=extra)
        entry = entry.model_copy(
            update={
                "args": args.model_dump(mode="json"),
                "min_workers": low,
                "max_workers": high,
                "defaults": [d for d in entry.defaults if d != "minWorkers"],
            }
        )
        async with self._lock:
            await self.store.update(model, entry)
            await self.serve.deploy(entry.app_name, args)
        self.feed.announce()
        if not synchronous:
            return 202, {"status": "Processing worker updates..."}

        def scaled(table: ModelTable) -> bool:
            state = table.versions.get(model, {}).get(entry.version)
            if state is None:
                return False
            if state.app_status == "DEPLOY_FAILED":
                raise ModelLoadError(
                    f"Failed to start workers for model {model} version: {entry.version}: {state.message}"
                )
            if state.app_status != "RUNNING":
                return False
            # Scaling to 0 is autoscaling with a floor of 0: replicas leave when Serve decides.
            return low == 0 or state.running_replicas == low or (high > low and state.running_replicas >= low)

        await self.serve.wait_until(
            scaled,
            self.settings.register_timeout_s,
            f'Model "{model}" did not reach {low} workers',
            SCALE_POLL_S,
        )
        self.feed.announce()
        status = f"Workers scaled to {low} for model: {model}" + (f", version: {version}" if version else "")
        return 200, {"status": status}

    async def _registered_or_explain(self, model: str, version: str | None) -> VersionRecord:
        _, table = await self.routing.table()
        chosen = version or table.default_version(model)
        registered = self.store.dedicated(model)
        if chosen in registered:
            return registered[chosen]
        if chosen in table.versions.get(model, {}):
            raise BadInputError(
                f'Model "{model}" comes from the server\'s config file: change its '
                "resources.num_replicas there and deploy the file again"
            )
        raise self._not_found(model, chosen, table)

    def _not_found(self, model: str, version: str | None, table: ModelTable) -> ModelNotFoundError:
        return not_found(model, version, table, self.store)

    async def set_default(self, model: str, version: str) -> dict[str, str]:
        """Make ``version`` the one /predictions/{model} uses (any version: registered, pooled
        or from the config); a traffic split of the model ends (traffic.py)."""
        return await self.traffic.set_default(model, version, self.store.dedicated(model))

    async def unregister(self, model: str, version: str | None) -> dict[str, str]:
        """Hide the version from the ingress, let it drain, then delete its application (or
        forget it and unload it from its pool). As in TorchServe, the default version goes only
        when it is the model's last one (403 otherwise: set another default first); a version a
        traffic split sends requests to, likewise (removal.version_to_remove)."""
        _, table = await self.routing.table()
        registered = self.store.dedicated(model)
        version = version_to_remove(table, model, version, registered, self.routing.draining())
        if version in self.store.pooled(model):
            await self.pools.unregister(model, version)
        else:
            await self._remove(model, version, drain=True, table=table)
        return {"status": f'Model "{model}" unregistered'}

    async def _remove(self, model: str, version: str, drain: bool, table: ModelTable | None = None) -> None:
        if table is None:
            _, table = await self.routing.table()
        state = table.versions.get(model, {}).get(version)
        app_name = state.app_name if state else registered_app_name(model, version)
        await self.removal.remove(model, version, app_name, drain)

    async def describe(
        self, model: str, version: str | None, customized: bool = False
    ) -> list[dict[str, Any]]:
        """TorchServe's describe (deployments.management.catalog.Catalog.describe)."""
        _, table = await self.routing.table()
        return await self.catalog.describe(table, model, version, customized)

    async def list_models(self) -> list[dict[str, str]]:
        """Every model (registered or from the config), with the URL it came from."""
        _, table = await self.routing.table()
        return self.catalog.list_models(table)
