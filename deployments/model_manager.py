"""Register, scale, describe and unregister model versions as Serve applications at runtime.

Each registered version is an application named ``<model>@<version>``, deployed without
blocking; readiness is awaited with our own deadline (Serve would wait forever for resources
that never come). Removal hides the version from the ingress first, waits for the ingress to
notice, and only then deletes the application, so no request is sent into a deleting app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import RunTarget

from deployments.model_sources import (
    RegisterParams,
    app_args,
    missing_resources,
    resolve_url,
    settle,
    unpack,
)
from deployments.model_table import ModelTable
from deployments.placement import decide_gpus
from deployments.registry_store import ConflictError, RegistryStore, VersionRecord
from deployments.settings import ManagementArgs, ModelAppArgs
from handlers.errors import (
    BadInputError,
    ModelLoadError,
    ModelNotFoundError,
    RaytorchError,
    RequestTimeoutError,
)

logger = logging.getLogger("ray.serve")
POLL_S = 0.5
# A synchronous register returns as soon as the replica is up; each poll is one serve.status()
# (~15 ms of CPU), so faster polling would slow the very replica start it waits for.
READY_POLL_S = 0.2


class InsufficientResourcesError(RaytorchError):
    """The cluster cannot start the requested replicas now."""

    status = 503
    type_name = "InsufficientResourcesException"


def app_name_for(model: str, version: str) -> str:
    """Application name of a registered version."""
    return f"{model}@{version}"


class ModelManager:
    """The management API's operations over Serve and the persisted registry."""

    def __init__(self, settings: ManagementArgs) -> None:
        self.settings = settings
        self.state_dir = Path(os.environ.get("RAYTORCH_STATE_DIR") or settings.state_dir).resolve()
        self.model_store = Path(os.environ.get("RAYTORCH_MODEL_STORE") or settings.model_store).resolve()
        self.models_dir = self.state_dir / "models"
        self.registry = RegistryStore(self.state_dir / "registry.json")
        self.draining: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    # -- Serve plumbing (blocking Serve calls run off the event loop) ----------------------
    async def _status(self) -> ModelTable:
        status = await asyncio.to_thread(serve.status)
        self._apps = {name: str(app.status.value) for name, app in status.applications.items()}
        return ModelTable.from_status(status.applications)

    async def _deploy(self, app_name: str, args: ModelAppArgs) -> None:
        from deployments.app import build_model

        target = RunTarget(target=build_model(args), name=app_name, route_prefix=None)
        await asyncio.to_thread(
            serve.run_many,
            [target],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> None:
        """Return when a replica is up; raise with Serve's reason on failure or deadline."""
        deadline = time.monotonic() + timeout_s
        message = ""
        while time.monotonic() < deadline:
            table = await self._status()
            state = table.versions.get(model, {}).get(version)
            if state is not None:
                message = state.message
                if state.ready:
                    return
                if state.app_status == "DEPLOY_FAILED":
                    raise ModelLoadError(f'Model "{model}" version {version} failed to load: {message}')
            await asyncio.sleep(READY_POLL_S)
        raise RequestTimeoutError(
            f'Model "{model}" version {version} was not ready within {timeout_s:g}s'
            + (f": {message}" if message else "")
        )

    # -- operations --------------------------------------------------------------------------
    async def restore(self) -> list[str]:
        """Redeploy registered versions whose application is missing (after a restart)."""
        await self._status()
        restored = []
        for model, record in self.registry.state.models.items():
            for version, entry in record.versions.items():
                if entry.app_name not in self._apps:
                    await self._deploy(entry.app_name, ModelAppArgs.model_validate(entry.args))
                    restored.append(f"{model}/{version}")
        if restored:
            logger.info("Restored registered models: %s", ", ".join(restored))
        return restored

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        """TorchServe's register: 200 when ready (synchronous) or 202 at once."""
        archive = resolve_url(params.url, self.model_store, self.settings.allowed_urls)
        found, folder = await asyncio.to_thread(unpack, archive, self.models_dir, f"{time.time_ns()}")
        try:
            args = app_args(found, params, self.settings.default_num_cpus)
            name, version = args.model.name, args.model.version
            table = await self._status()
            if version in table.versions.get(name, {}) or version in self._registered(name):
                raise ConflictError(f"Model version {version} is already registered for model {name}")
            await self._check_resources(args)
            final = settle(folder, self.models_dir, name, version, found.model)
            args = args.model_copy(update={"model": args.model.model_copy(update={"base_dir": str(final)})})
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        entry = VersionRecord(
            version=version,
            url=params.url,
            app_name=app_name_for(name, version),
            args=args.model_dump(mode="json"),
            min_workers=args.resources.num_replicas,
            max_workers=args.resources.max_replicas or args.resources.num_replicas,
            response_timeout_s=params.response_timeout or found.response_timeout_s,
        )
        async with self._lock:
            self.registry.add(name, entry)
            await self._deploy(entry.app_name, args)
        if not params.synchronous:
            return 202, {"status": "Processing worker updates..."}
        try:
            await self.wait_ready(name, version, self.settings.register_timeout_s)
        except BaseException:
            await self._remove(name, version, drain=False)
            raise
        workers = args.resources.num_replicas
        return 200, {"status": f'Model "{name}" Version: {version} registered with {workers} initial workers'}

    async def _check_resources(self, args: ModelAppArgs, replicas: int | None = None) -> None:
        # Serve would leave replicas pending forever (requests to them hang): refuse up front.
        if self.settings.wait_for_resources:
            return
        available = await asyncio.to_thread(ray.available_resources)
        total_gpus = (await asyncio.to_thread(ray.cluster_resources)).get("GPU", 0.0)
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
            update={"args": args.model_dump(mode="json"), "min_workers": low, "max_workers": high}
        )
        async with self._lock:
            self.registry.update(model, entry)
            await self._deploy(entry.app_name, args)
        if not synchronous:
            return 202, {"status": "Processing worker updates..."}
        await self._wait_replicas(model, entry.version, low)
        return 200, {"status": f"Workers scaled to {low} for model: {model}"}

    async def _wait_replicas(self, model: str, version: str, count: int) -> None:
        deadline = time.monotonic() + self.settings.register_timeout_s
        while time.monotonic() < deadline:
            state = (await self._status()).versions.get(model, {}).get(version)
            if state and state.running_replicas >= count and state.app_status == "RUNNING":
                return
            await asyncio.sleep(POLL_S)
        raise RequestTimeoutError(f'Model "{model}" did not reach {count} workers in time')

    async def _registered_or_explain(self, model: str, version: str | None) -> VersionRecord:
        try:
            return self.registry.get(model, version)
        except ModelNotFoundError:
            if model in (await self._status()).versions:
                raise BadInputError(
                    f'Model "{model}" comes from the server\'s config file: change its '
                    "resources.num_replicas there and deploy the file again"
                ) from None
            raise

    async def set_default(self, model: str, version: str) -> dict[str, str]:
        """Make ``version`` the one /predictions/{model} uses."""
        self.registry.set_default(model, version)
        # Answer once every ingress routes to the new default, as TorchServe's call implies.
        await asyncio.sleep(self.settings.propagation_s)
        return {"status": f'Default version updated for model "{model}" to "{version}"'}

    async def unregister(self, model: str, version: str | None) -> dict[str, str]:
        """Hide the version from the ingress, let it drain, then delete its application."""
        table = await self._status()
        if version is None:
            version = self.registry.defaults().get(model) or getattr(
                table.default_version(model), "version", None
            )
        if model not in table.versions and model not in self.registry.state.models:
            raise ModelNotFoundError(f"Model not found: {model}")
        if version not in table.versions.get(model, {}) and version not in self._registered(model):
            raise ModelNotFoundError(f"Model version not found: {model} version {version}")
        await self._remove(model, version, drain=True, table=table)
        return {"status": f'Model "{model}" unregistered'}

    async def _remove(self, model: str, version: str, drain: bool, table: ModelTable | None = None) -> None:
        table = table or await self._status()
        state = table.versions.get(model, {}).get(version)
        app_name = state.app_name if state else app_name_for(model, version)
        self.draining.add((model, version))
        try:
            if drain:
                await asyncio.sleep(self.settings.propagation_s)
            await asyncio.to_thread(serve.delete, app_name, _blocking=False)
            if version in self._registered(model):
                self.registry.remove(model, version)
                shutil.rmtree(self.models_dir / model / version, ignore_errors=True)
        finally:
            # Keep hiding it until Serve has really removed it (the ingress skips it meanwhile).
            asyncio.get_running_loop().call_later(30, self.draining.discard, (model, version))

    def routing(self) -> dict[str, Any]:
        """What the ingress needs beyond serve.status(): defaults and versions being removed."""
        return {"defaults": self.registry.defaults(), "draining": sorted(self.draining)}

    async def describe(self, model: str, version: str | None) -> list[dict[str, Any]]:
        """TorchServe's describe: one object per version (``version='all'`` for every one)."""
        table = await self._status()
        live = table.versions.get(model, {})
        registered = self._registered(model)
        if not live and not registered:
            raise ModelNotFoundError(f"Model not found: {model}")
        default = self.registry.defaults().get(model) or getattr(
            table.default_version(model), "version", None
        )
        versions = sorted(set(live) | set(registered)) if version == "all" else [version or default]
        if any(v not in live and v not in registered for v in versions):
            raise ModelNotFoundError(f"Model version not found: {model} version {versions[0]}")
        return [self._describe_one(model, v, live.get(v), registered.get(v), v == default) for v in versions]

    def _describe_one(
        self, model: str, version: str, state, entry: VersionRecord | None, is_default: bool
    ) -> dict:
        args = ModelAppArgs.model_validate(entry.args) if entry else None
        replicas = state.running_replicas if state else 0
        return {
            "modelName": model,
            "modelVersion": version,
            "modelUrl": entry.url if entry else f"config:{state.app_name}",
            "runtime": "python",
            "minWorkers": entry.min_workers if entry else replicas,
            "maxWorkers": entry.max_workers if entry else replicas,
            "batchSize": args.batching.max_batch_size if args else None,
            "maxBatchDelay": round(args.batching.batch_wait_timeout_s * 1000) if args else None,
            "responseTimeout": entry.response_timeout_s if entry else None,
            "loadedAtStartup": entry is None,
            "isDefault": is_default,
            "applicationName": state.app_name if state else (entry.app_name if entry else None),
            "status": state.app_status if state else "NOT_DEPLOYED",
            "message": state.message if state else "",
            "workers": [{"id": i, "status": "READY"} for i in range(replicas)],
        }

    async def list_models(self) -> list[dict[str, str]]:
        """Every model (registered or from the config), with the URL it came from."""
        table = await self._status()
        names = sorted(set(table.versions) | set(self.registry.state.models))
        result = []
        for name in names:
            entry = self._registered(name).get(self.registry.defaults().get(name, ""))
            url = entry.url if entry else f"config:{table.default_version(name).app_name}"  # type: ignore[union-attr]
            result.append({"modelName": name, "modelUrl": url})
        return result
