"""Register, scale, describe and unregister model versions as Serve applications at runtime.

Each registered version is an application ``<model>@<version>`` deployed without blocking;
readiness is awaited with our own deadline. Removal hides the version from the ingresses
first, waits for them to notice, and only then deletes the application, so no request is sent
into a deleting app. Every routing change (a default, a version appearing or being removed) is
announced to the ingresses through :meth:`ModelManager.routing_changes` (a long poll), so they
need not poll Serve often.
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
from deployments.common.settings import ManagementArgs, ModelAppArgs
from deployments.management.archive_sources import resolve_url, settle, unpack
from deployments.management.capacity import missing_resources
from deployments.management.describe import DeploymentFacts, describe_version
from deployments.management.register_params import RegisterParams, app_args, our_defaults
from deployments.management.registry import RegistryStore, VersionRecord
from deployments.management.routing_feed import RoutingFeed
from deployments.management.serve_control import ServeSnapshot
from deployments.model.placement import decide_gpus
from handlers.errors import (
    BadInputError,
    ConflictError,
    DefaultVersionError,
    InsufficientResourcesError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelVersionNotFoundError,
    RequestTimeoutError,
)

logger = logging.getLogger("ray.serve")
SCALE_POLL_S = 0.5
# How long a removed version stays hidden after its deletion started (Serve removes it meanwhile).
DRAIN_MEMORY_S = 30.0
# Serve deletes an application in a few seconds; an unregister waits for it this long at most.
UNREGISTER_TIMEOUT_S = 60.0
# Describe with customized=true asks a replica; it must not wait behind a long queue forever.
HANDLER_METADATA_TIMEOUT_S = 10.0


class Serve(Protocol):
    """What the manager needs of Ray Serve (deployments.management.serve_control.ServeControl)."""

    async def snapshot(self) -> ServeSnapshot: ...
    async def deploy(self, app_name: str, args: ModelAppArgs) -> None: ...
    async def delete(self, app_name: str) -> None: ...
    async def resources(self) -> tuple[dict[str, float], float]: ...
    async def wait_until(self, done: Any, timeout_s: float, what: str, poll_s: float = ...) -> None: ...
    async def deployment_facts(self, app_name: str, deployment_name: str) -> DeploymentFacts | None: ...
    async def handler_metadata(self, app_name: str, deployment_name: str, timeout_s: float) -> Any: ...


class ModelManager:
    """The management API's operations over Serve and the persisted registry."""

    def __init__(self, settings: ManagementArgs, serve: Serve) -> None:
        self.settings = settings
        self.serve = serve
        self.state_dir = Path(os.environ.get("RAYTORCH_STATE_DIR") or settings.state_dir).resolve()
        self.model_store = Path(os.environ.get("RAYTORCH_MODEL_STORE") or settings.model_store).resolve()
        self.models_dir = self.state_dir / "models"
        self.registry = RegistryStore(self.state_dir / "registry.json")
        self.draining: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()
        self.feed = RoutingFeed()
        self._watchers: set[asyncio.Task[None]] = set()

    # -- routing, as the ingresses see it ------------------------------------------------------
    def routing(self) -> dict[str, Any]:
        """Defaults and versions being removed, with a version number that grows on each change."""
        return {
            "version": self.feed.version,
            "defaults": self.registry.defaults(),
            "draining": sorted(self.draining),
        }

    def announce(self) -> None:
        """Wake every ingress waiting in :meth:`routing_changes`."""
        self.feed.announce()

    async def routing_changes(self, since: int, timeout_s: float) -> dict[str, Any]:
        """Routing as soon as it differs from version ``since``, or after ``timeout_s`` anyway."""
        await self.feed.wait_past(since, timeout_s)
        return self.routing()

    async def _table(self) -> tuple[dict[str, str], ModelTable]:
        snapshot = await self.serve.snapshot()
        snapshot.table.apply_routing(self.routing())
        return snapshot.apps, snapshot.table

    # -- operations ----------------------------------------------------------------------------
    async def restore(self) -> list[str]:
        """Redeploy registered versions whose application is missing (after a restart)."""
        apps, _ = await self._table()
        restored = []
        for model, record in self.registry.state.models.items():
            for version, entry in record.versions.items():
                if entry.app_name not in apps:
                    await self.serve.deploy(entry.app_name, ModelAppArgs.model_validate(entry.args))
                    restored.append(f"{model}/{version}")
                    self._watch_until_ready(model, version)
        if restored:
            logger.info("Restored registered models: %s", ", ".join(restored))
        return restored

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        """TorchServe's register: 200 when ready (synchronous) or 202 at once."""
        if not params.url:  # `url=` names no archive: TorchServe answers 404 too
            raise ModelNotFoundError('Model not found at: ""')
        archive = resolve_url(params.url, self.model_store, self.settings.allowed_urls)
        found, folder = await asyncio.to_thread(unpack, archive, self.models_dir, f"{time.time_ns()}")
        try:
            args = app_args(found, params, self.settings.default_num_cpus)
            name, version = args.model.name, args.model.version
            _, table = await self._table()
            if version in table.versions.get(name, {}) or version in self._registered(name):
                raise ConflictError(f"Model version {version} is already registered for model {name}")
            await self._check_resources(args)
            final = settle(folder, self.models_dir, name, version)
            args = args.model_copy(update={"model": args.model.model_copy(update={"base_dir": str(final)})})
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        entry = VersionRecord(
            version=version,
            url=params.url,
            app_name=registered_app_name(name, version),
            args=args.model_dump(mode="json"),
            min_workers=args.resources.num_replicas,
            max_workers=args.resources.max_replicas or args.resources.num_replicas,
            response_timeout_s=params.response_timeout or found.response_timeout_s,
            startup_timeout_s=params.startup_timeout,
            runtime=params.runtime or found.runtime,
            defaults=our_defaults(found, params),
        )
        async with self._lock:
            self.registry.add(name, entry)
            await self.serve.deploy(entry.app_name, args)
        self.announce()
        workers = args.resources.num_replicas
        if params.synchronous or workers == 0:  # no worker to wait for: TorchServe answers 200 at once
            # startup_timeout is about workers starting: with none, only the app's creation counts.
            timeout = params.startup_timeout
            if timeout is None or workers == 0:
                timeout = self.settings.register_timeout_s
            try:
                await self.wait_ready(name, version, timeout, workers)
            except BaseException:
                await self._remove(name, version, drain=False)
                raise
        else:
            self._watch_until_ready(name, version)
            return 202, {"status": "Processing worker updates..."}
        if workers == 0:
            return 200, {
                "status": f'Model "{name}" Version: {version} registered with 0 initial workers. '
                "Use scale workers API to add workers for the model."
            }
        return 200, {"status": f'Model "{name}" Version: {version} registered with {workers} initial workers'}

    async def wait_ready(self, model: str, version: str, timeout_s: float, workers: int = 1) -> None:
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
            update={
                "args": args.model_dump(mode="json"),
                "min_workers": low,
                "max_workers": high,
                "defaults": [d for d in entry.defaults if d != "minWorkers"],
            }
        )
        async with self._lock:
            self.registry.update(model, entry)
            await self.serve.deploy(entry.app_name, args)
        self.announce()
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
        self.announce()
        status = f"Workers scaled to {low} for model: {model}" + (f", version: {version}" if version else "")
        return 200, {"status": status}

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
        return ModelVersionNotFoundError.of(model, version)

    async def set_default(self, model: str, version: str) -> dict[str, str]:
        """Make ``version`` the one /predictions/{model} uses."""
        _, table = await self._table()
        if version not in self._registered(model):
            if model not in table.versions and model not in self.registry.state.models:
                raise ModelNotFoundError(f"Model not found: {model}")
            if version in table.versions.get(model, {}):
                raise BadInputError(
                    f'Version {version} of model "{model}" comes from the server\'s config file: '
                    "set-default applies to registered versions"
                )
            # TorchServe's sentence for this call (unlike its others, without colons).
            raise ModelVersionNotFoundError(f"Model version {version} does not exist for model {model}")
        self.registry.set_default(model, version)
        self.announce()
        # Answer once every ingress routes to the new default, as TorchServe's call implies.
        await asyncio.sleep(self.settings.propagation_s)
        return {"status": f'Default version successfully updated for model "{model}" to "{version}"'}

    async def unregister(self, model: str, version: str | None) -> dict[str, str]:
        """Hide the version from the ingress, let it drain, then delete its application.

        As in TorchServe, the default version goes only when it is the model's last one (403
        otherwise: set another default first)."""
        _, table = await self._table()
        known = {
            v for v in set(table.versions.get(model, {})) | set(self._registered(model))
            if (model, v) not in self.draining
        }  # fmt: skip
        if not known:
            raise ModelNotFoundError(f"Model not found: {model}")
        default = table.default_name(model)
        version = version or default
        if version not in known:
            raise ModelVersionNotFoundError.of(model, version)
        if version == default and len(known) > 1:
            raise DefaultVersionError(f"Cannot remove default version for model {model}")
        await self._remove(model, version, drain=True, table=table)
        return {"status": f'Model "{model}" unregistered'}

    async def _remove(self, model: str, version: str, drain: bool, table: ModelTable | None = None) -> None:
        """Hide, delete, and return once Serve has removed the application, so the same
        version can be registered again at once (TorchServe's unregister is synchronous too)."""
        if table is None:
            _, table = await self._table()
        state = table.versions.get(model, {}).get(version)
        app_name = state.app_name if state else registered_app_name(model, version)
        key = (model, version)
        self.draining.add(key)
        self.announce()
        gone = False
        try:
            if drain:
                await asyncio.sleep(self.settings.propagation_s)
            await self.serve.delete(app_name)
            if version in self._registered(model):
                self.registry.remove(model, version)
                shutil.rmtree(self.models_dir / model / version, ignore_errors=True)

            def removed(current: ModelTable) -> bool:
                return all(s.app_name != app_name for s in current.versions.get(model, {}).values())

            try:
                await self.serve.wait_until(
                    removed,
                    UNREGISTER_TIMEOUT_S,
                    f"Timed out while cleaning resources: {model}",
                    SCALE_POLL_S,
                )
            except RequestTimeoutError:
                raise RequestTimeoutError(f"Timed out while cleaning resources: {model}") from None
            gone = True
        finally:
            if gone:  # nothing left to hide: the ingresses' next snapshot no longer has it
                self._undrain(key)
            else:  # keep hiding it until Serve has really removed it (the ingress skips it meanwhile)
                asyncio.get_running_loop().call_later(DRAIN_MEMORY_S, self._undrain, key)

    def _undrain(self, key: tuple[str, str]) -> None:
        self.draining.discard(key)
        self.announce()

    async def describe(
        self, model: str, version: str | None, customized: bool = False
    ) -> list[dict[str, Any]]:
        """TorchServe's describe: one object per version (``version='all'`` for every one).

        With ``customized`` (one version), the handler's own metadata is added from one of the
        version's replicas as ``customizedMetadata``: 503 when it has none running.
        """
        _, table = await self._table()
        live, registered = table.versions.get(model, {}), self._registered(model)
        if not live and not registered:
            raise ModelNotFoundError(f"Model not found: {model}")
        default = table.default_name(model)
        versions = sorted(set(live) | set(registered)) if version == "all" else [version or default]
        for v in versions:
            if v not in live and v not in registered:
                raise self._not_found(model, v, table)
        described = []
        for v in versions:
            state = live.get(v)
            facts = await self._facts(state)
            described.append(
                describe_version(
                    model, v, state, registered.get(v), v == default, facts, self.settings.register_timeout_s
                )
            )
        if customized and version != "all":
            described[0]["customizedMetadata"] = await self._handler_metadata(model, live.get(versions[0]))
        return described

    async def _facts(self, state: Any) -> DeploymentFacts | None:
        if state is None:
            return None
        try:
            return await self.serve.deployment_facts(state.app_name, state.deployment_name)
        except Exception as exc:  # describe still answers from the registry and the table
            logger.warning("No replica details for %s: %s", state.app_name, exc)
            return None

    async def _handler_metadata(self, model: str, state: Any) -> Any:
        if state is None or not state.ready:
            raise ModelNotReadyError(
                f'Model "{model}" has no worker to serve describe request. '
                "Please use scale workers API to add workers.",
                retry_after_s=5,
            )
        try:
            return await self.serve.handler_metadata(
                state.app_name, state.deployment_name, HANDLER_METADATA_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f'Model "{model}" did not describe itself within {HANDLER_METADATA_TIMEOUT_S:g}s'
            ) from None

    async def list_models(self) -> list[dict[str, str]]:
        """Every model (registered or from the config), with the URL it came from."""
        _, table = await self._table()
        result = []
        for name in sorted(set(table.versions) | set(self.registry.state.models)):
            default = table.default_name(name) or ""
            entry = self._registered(name).get(default)
            state = table.versions.get(name, {}).get(default)
            url = entry.url if entry else f"config:{state.app_name if state else name}"
            result.append({"modelName": name, "modelUrl": url})
        return result
