"""Register, scale, describe and unregister model versions as Serve applications at runtime.

Each registered version is an application ``<model>@<version>`` deployed without blocking;
readiness is awaited with our own deadline. Removal hides the version from the ingresses
first, waits for them to notice, and only then deletes the application, so no request is sent
into a deleting app. Versions registered into a model pool have no application: they are
handled by :mod:`deployments.management.pools`; defaults and traffic policies of every model by
:mod:`deployments.management.traffic`. Every routing change (a default, a version appearing or
being removed, a policy) is announced to the ingresses through
:meth:`ModelManager.routing_changes` (a long poll), so they need not poll Serve often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from deployments.common.model_table import ModelTable
from deployments.common.naming import registered_app_name
from deployments.common.routing import RoutingUpdate
from deployments.common.settings import ManagementArgs, ModelAppArgs
from deployments.management.archive_sources import is_remote, local_archive, settle, unpack
from deployments.management.capacity import missing_resources
from deployments.management.describe import describe_version
from deployments.management.downloads import DownloadPolicy, download
from deployments.management.ingress_routing import IngressRouting
from deployments.management.pools import PoolCallsProtocol, PoolManager
from deployments.management.register_params import RegisterParams, app_args
from deployments.management.registry import RegistryStore, VersionRecord
from deployments.management.restore import Restorer
from deployments.management.serve_control import ServeSnapshot
from deployments.management.traffic import TrafficControl
from deployments.management.traffic_store import TrafficStore
from deployments.model.placement import decide_gpus
from handlers.archive import ArchiveModel
from handlers.errors import (
    BadInputError,
    ConflictError,
    InsufficientResourcesError,
    ModelLoadError,
    ModelNotFoundError,
    RequestTimeoutError,
)

logger = logging.getLogger("ray.serve")
SCALE_POLL_S = 0.5
# How long a removed version stays hidden after its deletion started (Serve removes it meanwhile).
DRAIN_MEMORY_S = 30.0
# Pooled registrations check conflicts and pools against a Serve snapshot this recent: a
# serve.status() per registration would make bulk registration slow.
RECENT_TABLE_S = 1.0


class Serve(Protocol):
    """What the manager needs of Ray Serve (deployments.management.serve_control.ServeControl)."""

    async def snapshot(self) -> ServeSnapshot: ...
    async def deploy(self, app_name: str, args: ModelAppArgs) -> None: ...
    async def delete(self, app_name: str) -> None: ...
    async def resources(self) -> tuple[dict[str, float], float]: ...
    async def wait_until(self, done: Any, timeout_s: float, what: str, poll_s: float = ...) -> None: ...


class ModelManager:
    """The management API's operations over Serve and the persisted registry."""

    def __init__(
        self, settings: ManagementArgs, serve: Serve, pool_calls: PoolCallsProtocol | None = None
    ) -> None:
        self.settings = settings
        self.serve = serve
        self.state_dir = Path(os.environ.get("RAYTORCH_STATE_DIR") or settings.state_dir).resolve()
        self.model_store = Path(os.environ.get("RAYTORCH_MODEL_STORE") or settings.model_store).resolve()
        self.models_dir = self.state_dir / "models"
        self.downloads_dir = self.state_dir / "downloads"
        self.download_policy = DownloadPolicy.create(
            settings.allowed_urls, settings.allowed_networks, settings.download_timeout_s,
            settings.max_download_bytes,
        )  # fmt: skip
        self.registry = RegistryStore(self.state_dir / "registry.json")
        self.draining: set[tuple[str, str]] = set()
        # (name, version) of registrations past their conflict check that are not in the
        # registry yet: a second registration of the same version is refused before it can
        # move any file (two racing registrations once mixed their files).
        self._reserved: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()
        self._watchers: set[asyncio.Task[None]] = set()
        self._recent: tuple[float, ModelTable] | None = None
        if pool_calls is None:
            from deployments.pool.calls import PoolCalls

            pool_calls = PoolCalls()
        self.pools = PoolManager(
            settings, self.state_dir, pool_calls, self._unpack, self._recent_table,
            lambda m, v: v in self._registered(m), self._reserved, self._models_changed,
        )  # fmt: skip
        self.traffic = TrafficControl(
            TrafficStore(self.state_dir / "traffic.json"), self._current_table, self._models_changed,
            settings.propagation_s,
        )  # fmt: skip
        self.routing = IngressRouting(self.registry, self.pools, self.traffic.store, lambda: self.draining)

    # -- routing, as the ingresses see it ------------------------------------------------------
    def announce(self) -> None:
        """Wake every ingress waiting in :meth:`routing_changes`: Serve's applications changed."""
        self.routing.feed.announce()

    def _models_changed(self, models: list[str]) -> None:
        """Announce a change of these models' routing that did not touch Serve's applications."""
        self.routing.feed.announce(models, serve=False)

    async def routing_changes(self, since: int, timeout_s: float, epoch: str = "") -> RoutingUpdate:
        """What changed after version ``since``, as soon as something did, or after ``timeout_s``."""
        await self.routing.feed.wait_past(since, timeout_s, epoch)
        return self.routing.update(since, epoch)

    async def _table(self) -> tuple[dict[str, str], ModelTable]:
        snapshot = await self.serve.snapshot()
        snapshot.table.apply_routing(self.routing.state())
        return snapshot.apps, snapshot.table

    async def _current_table(self) -> ModelTable:
        return (await self._table())[1]

    async def _recent_table(self) -> ModelTable:
        """Serve's table (no routing applied), at most ``RECENT_TABLE_S`` old."""
        now = time.monotonic()
        if self._recent is None or now - self._recent[0] > RECENT_TABLE_S:
            self._recent = (now, (await self.serve.snapshot()).table)
        return self._recent[1]

    # -- operations ----------------------------------------------------------------------------
    async def restore(self) -> list[str]:
        """Redeploy registered versions whose application is missing (after a restart); each
        on its own, retried, and never one that a config file's application already serves
        (see :class:`deployments.management.restore.Restorer`)."""
        restorer = Restorer(
            self.registry, self.serve, self.models_dir, self.settings, self._table,
            self._watch_until_ready, self.announce,
        )  # fmt: skip
        return await restorer.run()

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        """TorchServe's register: 200 when ready (synchronous) or 202 at once."""
        pool = self.pools.target(params)
        if pool is not None:
            return await self.pools.register(params, pool)
        found, folder = await self._unpack(params.url)
        reserved = None
        try:
            args = app_args(
                found, params, self.settings.default_num_cpus, self.settings.trusted_modules,
                self.settings.allow_archive_code,
            )  # fmt: skip
            name, version = args.model.name, args.model.version
            reserved = await self._reserve(name, version)
            await self._check_resources(args)
            final = settle(folder, self.models_dir, name, version)
            args = args.model_copy(update={"model": args.model.model_copy(update={"base_dir": str(final)})})
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if reserved:
                self._reserved.discard(reserved)
            raise
        entry = VersionRecord(
            version=version,
            url=params.url,
            app_name=registered_app_name(name, version),
            args=args.model_dump(mode="json"),
            min_workers=args.resources.num_replicas,
            max_workers=args.resources.max_replicas or args.resources.num_replicas,
            response_timeout_s=params.response_timeout or found.response_timeout_s,
        )
        try:
            async with self._lock:
                self.registry.add(name, entry)
                await self.serve.deploy(entry.app_name, args)
        finally:
            self._reserved.discard(reserved)
        self.announce()
        if not params.synchronous:
            self._watch_until_ready(name, version)
            return 202, {"status": "Processing worker updates..."}
        try:
            await self.wait_ready(name, version, self.settings.register_timeout_s)
        except BaseException:
            await self._remove(name, version, drain=False)
            raise
        workers = args.resources.num_replicas
        return 200, {"status": f'Model "{name}" Version: {version} registered with {workers} initial workers'}

    async def _unpack(self, url: str) -> tuple[ArchiveModel, Path]:
        """Find (or download, off the event loop) the archive and unpack it into a scratch folder."""
        if not is_remote(url):
            archive = local_archive(url, self.model_store)
            return await asyncio.to_thread(unpack, archive, self.models_dir, f"{time.time_ns()}")
        archive = await asyncio.to_thread(download, url, self.downloads_dir, self.download_policy)
        try:
            return await asyncio.to_thread(unpack, archive, self.models_dir, f"{time.time_ns()}")
        finally:
            archive.unlink(missing_ok=True)  # what counts is the unpacked copy

    async def _reserve(self, name: str, version: str) -> tuple[str, str]:
        """Claim (name, version) for this registration, or 409 when it exists or is claimed."""
        _, table = await self._table()
        key = (name, version)
        # No await between this check and the claim: other registrations see it at once.
        if (
            key in self._reserved
            or version in table.versions.get(name, {})  # pooled versions included
            or version in self._registered(name)
        ):
            raise ConflictError(f"Model version {version} is already registered for model {name}")
        self._reserved.add(key)
        return key

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> None:
        """Return when a replica is up (and tell the ingresses); raise with Serve's reason."""
        message = ""

        def ready(table: ModelTable) -> bool:
            nonlocal message
            state = table.versions.get(model, {}).get(version)
            if state is None:
                return False
            message = state.message
            if state.app_status == "DEPLOY_FAILED":
                raise ModelLoadError(f'Model "{model}" version {version} failed to load: {message}')
            return state.ready

        try:
            await self.serve.wait_until(ready, timeout_s, f'Model "{model}" version {version} was not ready')
        except RequestTimeoutError as exc:
            raise RequestTimeoutError(f"{exc.message}: {message}" if message else exc.message) from None
        self.announce()

    def _watch_until_ready(self, model: str, version: str) -> None:
        async def watch() -> None:
            with contextlib.suppress(Exception):  # failures show in describe and /ping
                await self.wait_ready(model, version, self.settings.register_timeout_s)

        task = asyncio.get_running_loop().create_task(watch())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _check_resources(self, args: ModelAppArgs, replicas: int | None = None) -> None:
        # Serve would leave replicas pending forever (requests to them hang): refuse up front.
        if self.settings.wait_for_resources:
            return
        available, total_gpus = await self.serve.resources()
        gpus = decide_gpus(args.resources, total_gpus, args.model.name).num_gpus
        problem = missing_resources(args, available, replicas, gpus)
        if problem:
            raise InsufficientResourcesError(problem)

    def _registered(self, model: str) -> dict[str, VersionRecord]:
        record = self.registry.state.models.get(model)
        return record.versions if record else {}

    async def scale(
        self, model: str, version: str | None, low: int, high: int, synchronous: bool
    ) -> tuple[int, dict]:
        """Set replicas (low == high) or an autoscaling range for a registered version."""
        _, table = await self._table()
        state = table.versions.get(model, {}).get(version or table.default_name(model) or "")
        if state is not None and state.pool is not None:
            raise BadInputError(
                f'Model "{model}" version {state.version} is in pool {state.pool}, whose replicas serve '
                "every model in it: scale the pool in the server's config (resources.num_replicas, "
                "max_replicas), or register the model as a dedicated deployment"
            )
        entry = await self._registered_or_explain(model, version)
        args = ModelAppArgs.model_validate(entry.args)
        resources = args.resources.model_copy(
            update={"num_replicas": low, "max_replicas": high if high > low else None}
        )
        extra = max(0, low - args.resources.num_replicas)
        args = args.model_copy(update={"resources": resources})
        if extra:
            await self._check_resources(args, replicas=extra)
        entry = entry.model_copy(
            update={"args": args.model_dump(mode="json"), "min_workers": low, "max_workers": high}
        )
        async with self._lock:
            self.registry.update(model, entry)
            await self.serve.deploy(entry.app_name, args)
        self.announce()
        if not synchronous:
            return 202, {"status": "Processing worker updates..."}

        def scaled(table: ModelTable) -> bool:
            state = table.versions.get(model, {}).get(entry.version)
            return bool(state and state.running_replicas >= low and state.app_status == "RUNNING")

        await self.serve.wait_until(
            scaled,
            self.settings.register_timeout_s,
            f'Model "{model}" did not reach {low} workers',
            SCALE_POLL_S,
        )
        self.announce()
        return 200, {"status": f"Workers scaled to {low} for model: {model}"}

    async def _registered_or_explain(self, model: str, version: str | None) -> VersionRecord:
        _, table = await self._table()
        chosen = version or table.default_name(model)
        if chosen in self._registered(model):
            return self._registered(model)[chosen]
        if chosen in table.versions.get(model, {}):
            raise BadInputError(
                f'Model "{model}" comes from the server\'s config file: change its '
                "resources.num_replicas there and deploy the file again"
            )
        raise self._not_found(model, chosen, table)

    def _not_found(self, model: str, version: str | None, table: ModelTable) -> ModelNotFoundError:
        if model not in table.versions and model not in self.registry.state.models:
            return ModelNotFoundError(f"Model not found: {model}")
        return ModelNotFoundError(f"Model version not found: {model} version {version}")

    async def set_default(self, model: str, version: str) -> dict[str, str]:
        """Make ``version`` the one /predictions/{model} uses (any version: registered,
        pooled or from the config); a traffic split of the model ends."""
        _, table = await self._table()
        if version not in table.versions.get(model, {}) and version not in self._registered(model):
            raise self._not_found(model, version, table)
        if version in self._registered(model):
            self.registry.set_default(model, version)
        await asyncio.to_thread(self.traffic.store.set_default, model, version)
        self._models_changed([model])
        # Answer once every ingress routes to the new default, as TorchServe's call implies.
        await asyncio.sleep(self.settings.propagation_s)
        return {"status": f'Default version updated for model "{model}" to "{version}"'}

    async def unregister(self, model: str, version: str | None) -> dict[str, str]:
        """Hide the version from the ingress, let it drain, then delete its application (or
        forget it and unload it from its pool)."""
        _, table = await self._table()
        version = version or table.default_name(model)
        if version not in table.versions.get(model, {}) and version not in self._registered(model):
            raise self._not_found(model, version, table)
        if version in self.pools.registry.versions(model):
            await self.pools.unregister(model, version)
        else:
            await self._remove(model, version, drain=True, table=table)
        if await asyncio.to_thread(self.traffic.store.forget_version, model, version):
            self._models_changed([model])
        return {"status": f'Model "{model}" unregistered'}

    async def _remove(self, model: str, version: str, drain: bool, table: ModelTable | None = None) -> None:
        if table is None:
            _, table = await self._table()
        state = table.versions.get(model, {}).get(version)
        app_name = state.app_name if state else registered_app_name(model, version)
        self.draining.add((model, version))
        self.announce()
        try:
            if drain:
                await asyncio.sleep(self.settings.propagation_s)
            await self.serve.delete(app_name)
            if version in self._registered(model):
                self.registry.remove(model, version)
                shutil.rmtree(self.models_dir / model / version, ignore_errors=True)
        finally:
            # Keep hiding it until Serve has really removed it (the ingress skips it meanwhile).
            asyncio.get_running_loop().call_later(DRAIN_MEMORY_S, self._undrain, (model, version))

    def _undrain(self, key: tuple[str, str]) -> None:
        self.draining.discard(key)
        self.announce()

    async def describe(self, model: str, version: str | None) -> list[dict[str, Any]]:
        """TorchServe's describe: one object per version (``version='all'`` for every one)."""
        _, table = await self._table()
        live, registered = table.versions.get(model, {}), self._registered(model)
        if not live and not registered:
            raise ModelNotFoundError(f"Model not found: {model}")
        default = table.default_name(model)
        versions = sorted(set(live) | set(registered)) if version == "all" else [version or default]
        for v in versions:
            if v not in live and v not in registered:
                raise self._not_found(model, v, table)
        pooled = self.pools.registry.versions(model)
        described = [
            await self.pools.describe(model, v, table, v == default)
            if v in pooled
            else describe_version(model, v, live.get(v), registered.get(v), v == default)
            for v in versions
        ]
        for item in described:
            item.update(self.traffic.version_fields(model, item["modelVersion"], default))
        return described

    async def list_models(self) -> list[dict[str, str]]:
        """Every model (registered or from the config), with the URL it came from."""
        _, table = await self._table()
        result = []
        for name in sorted(set(table.versions) | set(self.registry.state.models)):
            default = table.default_name(name) or ""
            entry = self._registered(name).get(default) or self.pools.registry.versions(name).get(default)
            state = table.versions.get(name, {}).get(default)
            url = entry.url if entry else f"config:{state.app_name if state else name}"
            result.append({"modelName": name, "modelUrl": url})
        return result
