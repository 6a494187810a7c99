"""Pooled registrations: archives registered into a model pool instead of an application.

Registering one unpacks its archive into the state directory, records it in the pool journal
and announces it to the ingresses; no Serve application is created. With ``synchronous=true``
(the default) one pool replica loads it once first, so a broken archive or a model too big for
the pool's budget is refused at registration, as a dedicated model would be. Unregistering hides
the version from the ingresses, waits for them to notice, forgets it and unloads it from every
replica of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from deployments.common.model_table import ModelTable, PoolState
from deployments.common.naming import pooled_model_id
from deployments.common.routing import PooledEntry
from deployments.common.settings import ManagementArgs
from deployments.management.archive_sources import settle
from deployments.management.pool_registry import PooledVersion, PoolRegistry
from deployments.management.register_params import RegisterParams, app_args
from handlers.archive import ArchiveModel
from handlers.errors import BadInputError, ConflictError, RaytorchError

logger = logging.getLogger("ray.serve")


class PoolCallsProtocol(Protocol):
    """Calls to pool replicas (deployments.pool.calls.PoolCalls; a fake in tests)."""

    async def validate(
        self, pool: PoolState, model_id: str, spec: dict[str, Any], timeout_s: float
    ) -> dict[str, float]: ...
    async def unload(self, pool: PoolState, model_id: str) -> int: ...
    async def reports(self, pool: PoolState) -> list[dict[str, Any]]: ...


class PoolManager:
    """Register, describe and unregister pooled versions.

    ``unpack(url)`` finds (or downloads) an archive and unpacks it into a scratch folder, as for
    a dedicated registration; ``table()`` returns a recent Serve table (its pools and the
    versions Serve runs); ``is_dedicated(model, version)`` says whether a dedicated registration
    holds that version; ``reserved`` is the set of (model, version) claimed by registrations in
    progress, shared with dedicated ones; ``changed(models)`` announces routing changes of
    ``models`` to the ingresses.
    """

    def __init__(
        self,
        settings: ManagementArgs,
        state_dir: Path,
        calls: PoolCallsProtocol,
        unpack: Callable[[str], Awaitable[tuple[ArchiveModel, Path]]],
        table: Callable[[], Awaitable[ModelTable]],
        is_dedicated: Callable[[str, str], bool],
        reserved: set[tuple[str, str]],
        changed: Callable[[list[str]], None],
    ) -> None:
        self.settings = settings
        self.models_dir = state_dir / "models"
        self.registry = PoolRegistry(state_dir / "pooled.jsonl")
        self.calls = calls
        self._unpack = unpack
        self._table = table
        self._is_dedicated = is_dedicated
        self._reserved = reserved
        self._changed = changed
        self.draining: set[tuple[str, str]] = set()
        self.failed: dict[tuple[str, str], str] = {}  # asynchronous registrations that did not load
        self.checking: set[tuple[str, str]] = set()  # asynchronous registrations being loaded once
        self._checks: set[asyncio.Task[None]] = set()

    def target(self, params: RegisterParams) -> str | None:
        """The pool a registration goes to (None: a dedicated application)."""
        if params.dedicated and params.pool:
            raise BadInputError("Use either pool= or dedicated=true, not both")
        return None if params.dedicated else params.pool or self.settings.default_pool

    def routing(self, model: str) -> dict[str, PooledEntry]:
        """The pooled versions of ``model`` the ingresses route to."""
        return {v: PooledEntry(r.pool, r.model_id) for v, r in self.registry.versions(model).items()}

    def spec(self, model_id: str) -> dict[str, Any] | None:
        """The spec a pool replica loads for ``model_id`` (None: not registered)."""
        found = self.registry.by_model_id(model_id)
        return found[1].spec if found else None

    async def _pool(self, name: str, table: ModelTable) -> PoolState:
        pool = table.pools.get(name)
        if pool is None:
            known = ", ".join(sorted(table.pools)) or "none"
            raise BadInputError(f"No model pool named {name!r} runs on this server (pools: {known})")
        return pool

    async def register(self, params: RegisterParams, pool_name: str) -> tuple[int, dict[str, str]]:
        """Register into ``pool_name``: 200 once a replica loaded it once, 202 at once when
        ``synchronous=false`` (then a failed load shows in describe)."""
        found, folder = await self._unpack(params.url)
        final: Path | None = None
        key: tuple[str, str] | None = None
        try:
            spec = app_args(
                found, params, self.settings.default_num_cpus, self.settings.trusted_modules,
                self.settings.allow_archive_code,
            ).model  # fmt: skip
            name, version = spec.name, spec.version
            table = await self._table()
            pool = await self._pool(pool_name, table)
            # Claimed with no await since the check: a racing registration of the same version,
            # pooled or dedicated, is refused before either moves a file.
            taken = version in table.versions.get(name, {}) or self._is_dedicated(name, version)
            if taken or version in self.registry.versions(name) or (name, version) in self._reserved:
                raise ConflictError(f"Model version {version} is already registered for model {name}")
            key = (name, version)
            self._reserved.add(key)
            final = settle(folder, self.models_dir, name, version)
            record = PooledVersion(
                version=version,
                url=params.url,
                pool=pool_name,
                model_id=pooled_model_id(name, version, secrets.token_hex(4)),
                spec=spec.model_copy(update={"base_dir": str(final)}).model_dump(mode="json"),
            )
            await asyncio.to_thread(self.registry.add, name, record)
        except BaseException:
            for leftover in (folder, final):
                if leftover is not None:
                    shutil.rmtree(leftover, ignore_errors=True)
            raise
        finally:
            if key is not None:
                self._reserved.discard(key)
        self._changed([name])
        if not params.synchronous:
            self._check_later(pool, name, record)
            return 202, {"status": "Processing worker updates..."}
        try:
            await self.calls.validate(pool, record.model_id, record.spec, self.settings.register_timeout_s)
        except BaseException:
            await self._forget(name, version)
            raise
        return 200, {"status": f'Model "{name}" Version: {version} registered in pool {pool_name}'}

    def _check_later(self, pool: PoolState, name: str, record: PooledVersion) -> None:
        key = (name, record.version)
        self.checking.add(key)

        async def check() -> None:
            try:
                await self.calls.validate(
                    pool, record.model_id, record.spec, self.settings.register_timeout_s
                )
            except Exception as exc:  # recorded for describe: nobody waits for this answer
                reason = exc.message if isinstance(exc, RaytorchError) else f"{type(exc).__name__}: {exc}"
                self.failed[key] = reason
                logger.error("Model %s version %s does not load in pool %s: %s", *key, pool.name, reason)
            finally:
                self.checking.discard(key)

        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def unregister(self, model: str, version: str) -> None:
        """Hide the version from the ingresses, let them notice, forget it, unload it."""
        self.draining.add((model, version))
        self._changed([model])
        try:
            await asyncio.sleep(self.settings.propagation_s)
            record = self.registry.versions(model).get(version)
            await self._forget(model, version)
            table = await self._table()
            if record is not None and record.pool in table.pools:
                await self.calls.unload(table.pools[record.pool], record.model_id)
        finally:
            self.draining.discard((model, version))
            self._changed([model])

    async def _forget(self, model: str, version: str) -> None:
        await asyncio.to_thread(self.registry.remove, model, version)
        self.failed.pop((model, version), None)
        shutil.rmtree(self.models_dir / model / version, ignore_errors=True)
        self._changed([model])

    async def describe(self, model: str, version: str, table: ModelTable, is_default: bool) -> dict[str, Any]:
        """TorchServe's describe object of a pooled version, plus where it is loaded now."""
        record = self.registry.versions(model)[version]
        state = table.versions.get(model, {}).get(version)
        pool = table.pools.get(record.pool)
        reports: list[dict[str, Any]] = []
        if pool is not None:
            with contextlib.suppress(Exception):
                reports = await self.calls.reports(pool)
        failure = self.failed.get((model, version))
        status = "LOAD_FAILED" if failure else (state.app_status if state else "NO_POOL")
        if (model, version) in self.checking:
            status = "LOADING"  # an asynchronous registration's first load is running
        message = failure or (table.not_ready_reason(state) if state and not state.ready else "")
        return {
            "modelName": model,
            "modelVersion": version,
            "modelUrl": record.url,
            "runtime": "python",
            "pool": record.pool,
            "minWorkers": pool.running_replicas if pool else 0,
            "maxWorkers": pool.running_replicas if pool else 0,
            "batchSize": reports[0].get("max_batch_size") if reports else None,
            "maxBatchDelay": round(reports[0].get("batch_wait_timeout_s", 0) * 1000) if reports else None,
            "responseTimeout": None,
            "loadedAtStartup": False,
            "isDefault": is_default,
            "applicationName": pool.app_name if pool else None,
            "status": status,
            "message": message,
            # Every replica of the pool serves the model; "loaded" says which hold it now.
            "workers": [
                {"id": r["replica"], "status": "READY", "loaded": record.model_id in r["models"]}
                for r in reports
            ],
            "loadedOn": [r["replica"] for r in reports if record.model_id in r["models"]],
        }
