"""Pooled registrations: archives registered into a model pool instead of an application.

Registering one unpacks its archive into the state directory, records it in the state store
(which announces it to the ingresses); no Serve application is created. With ``synchronous=true``
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
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from deployments.common.management_args import ManagementArgs
from deployments.common.model_table import ModelTable, ModelVersionState, PoolState
from deployments.common.naming import pooled_model_id
from deployments.common.routing import PooledEntry
from deployments.common.settings import ModelAppArgs
from deployments.management.code_policy import check_registered_code
from deployments.management.describe import DEFAULT_RESPONSE_TIMEOUT_S, DeploymentFacts, describe_version
from deployments.management.intake import Intake, record_fields
from deployments.management.register_params import TORCHSERVE_DEFAULTS, RegisterParams
from deployments.management.routing_feed import RoutingFeed
from deployments.management.serve_control import Serve
from deployments.management.state_records import PooledVersion
from deployments.management.state_store import StateStore
from handlers.errors import BadInputError, ConfigError, RaytorchError, validation_message
from handlers.spec import ModelSpec

logger = logging.getLogger("ray.serve")
# Registrations check conflicts and pools against a Serve snapshot this recent: a
# serve.status() per registration would make bulk registration slow.
RECENT_TABLE_S = 1.0


class PoolCallsProtocol(Protocol):
    """Calls to pool replicas (deployments.common.pool_calls.PoolCalls; a fake in tests)."""

    async def validate(
        self, pool: PoolState, model_id: str, spec: dict[str, Any], timeout_s: float
    ) -> dict[str, float]: ...
    async def unload(self, pool: PoolState, model_id: str) -> int: ...
    async def reports(self, pool: PoolState) -> list[dict[str, Any]]: ...


class PoolManager:
    """Register, describe and unregister pooled versions.

    ``intake`` takes registrations in as for a dedicated model (unpacking, parsing, the code
    policy, claims shared with dedicated registrations); Serve's table (its pools and the
    versions Serve runs) is read here at most every ``RECENT_TABLE_S``; ``feed`` tells the
    ingresses which versions are being removed (the store announces what it records).
    """

    def __init__(
        self,
        settings: ManagementArgs,
        models_dir: Path,
        calls: PoolCallsProtocol,
        intake: Intake,
        store: StateStore,
        serve: Serve,
        feed: RoutingFeed,
    ) -> None:
        self.settings = settings
        self.models_dir = models_dir
        self.store = store
        self.calls = calls
        self.intake = intake
        self.serve = serve
        self._recent: tuple[float, ModelTable] | None = None
        self.feed = feed
        self.draining: set[tuple[str, str]] = set()
        self.failed: dict[tuple[str, str], str] = {}  # asynchronous registrations that did not load
        self.checking: set[tuple[str, str]] = set()  # asynchronous registrations being loaded once
        self.refused: dict[tuple[str, str], str] = {}  # code the server's policy no longer allows
        self._checks: set[asyncio.Task[None]] = set()

    async def _table(self) -> ModelTable:
        """Serve's table (no routing applied), at most ``RECENT_TABLE_S`` old."""
        now = time.monotonic()
        if self._recent is None or now - self._recent[0] > RECENT_TABLE_S:
            self._recent = (now, (await self.serve.snapshot()).table)
        return self._recent[1]

    @staticmethod
    async def _no_own_packages(args: ModelAppArgs) -> None:
        """400 for an archive whose requirements are installed per model: a pool replica's
        environment is shared by every model in it."""
        if args.resources.pip_packages:
            raise BadInputError(
                "This archive's requirements are installed per model (install_py_dep_per_model), "
                "which a pooled model cannot have: register it with dedicated=true"
            )

    def target(self, params: RegisterParams) -> str | None:
        """The pool a registration goes to (None: a dedicated application)."""
        if params.dedicated and params.pool:
            raise BadInputError("Use either pool= or dedicated=true, not both")
        return None if params.dedicated else params.pool or self.settings.default_pool

    @staticmethod
    def refuse_scaling(table: ModelTable, model: str, version: str | None) -> None:
        """400 when the version (None: the default) is pooled: its pool's replicas are shared."""
        state = table.versions.get(model, {}).get(version or table.default_version(model) or "")
        if state is not None and state.pool is not None:
            raise BadInputError(
                f'Model "{model}" version {state.version} is in pool {state.pool}, whose replicas serve '
                "every model in it: scale the pool in the server's config (resources.num_replicas, "
                "max_replicas), or register the model as a dedicated deployment"
            )

    def routing(self, model: str) -> dict[str, PooledEntry]:
        """The pooled versions of ``model`` the ingresses route to."""
        return {v: PooledEntry(r.pool, r.model_id) for v, r in self.store.pooled(model).items()}

    def spec(self, model_id: str) -> dict[str, Any] | None:
        """The spec a pool replica loads for ``model_id`` (None: not registered; ConfigError:
        its code is no longer allowed, see :meth:`refuse_disallowed_code`)."""
        found = self.store.by_model_id(model_id)
        if found is None:
            return None
        refused = self.refused.get((found[0], found[1].version))
        if refused is not None:
            raise ConfigError(refused)
        return found[1].spec

    def refuse_disallowed_code(self) -> list[tuple[str, str, str]]:
        """Check every pooled version against the code policy as it is now (the server may have
        restarted with ``allow_archive_code: false`` or fewer ``trusted_modules``): those it
        refuses are never handed to a pool replica again and describe says why. Returns
        (model, version, reason) of each."""
        refused = []
        for model in sorted(self.store.models()):
            for version, record in self.store.pooled(model).items():
                try:
                    spec = ModelSpec.model_validate(record.spec)
                    check_registered_code(
                        spec, self.settings.trusted_modules, self.settings.allow_archive_code
                    )
                except (RaytorchError, ValidationError) as exc:
                    reason = (
                        exc.message if isinstance(exc, RaytorchError) else validation_message(exc.errors())
                    )
                    self.refused[(model, version)] = reason
                    refused.append((model, version, reason))
        return refused

    def _pool(self, name: str, table: ModelTable) -> PoolState:
        pool = table.pools.get(name)
        if pool is None:
            known = ", ".join(sorted(table.pools)) or "none"
            raise BadInputError(f"No model pool named {name!r} runs on this server (pools: {known})")
        return pool

    async def register(self, params: RegisterParams, pool_name: str) -> tuple[int, dict[str, str]]:
        """Register into ``pool_name``: 200 once a replica loaded it once, 202 at once when
        ``synchronous=false`` (then a failed load shows in describe)."""
        pool = self._pool(pool_name, await self._table())
        # The same intake as a dedicated registration; the pool owns the resources.
        found, args = await self.intake.prepare(params, check=self._no_own_packages, table=self._table)
        spec, name, version = args.model, args.model.name, args.model.version
        try:
            record = PooledVersion(
                version=version,
                pool=pool_name,
                model_id=pooled_model_id(name, version, secrets.token_hex(4)),
                spec=spec.model_dump(mode="json"),
                **record_fields(found, params),
            )
            await self.store.add(name, record)  # announced to the ingresses
        except BaseException:
            if spec.base_dir:
                shutil.rmtree(spec.base_dir, ignore_errors=True)
            raise
        finally:
            self.intake.release(name, version)
        if not params.synchronous:
            self._check_later(pool, name, record)
            return 202, {"status": "Processing worker updates..."}
        timeout = params.startup_timeout
        if timeout is None:
            timeout = self.settings.register_timeout_s
        try:
            await self.calls.validate(pool, record.model_id, record.spec, timeout)
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
        self.feed.announce([model], serve=False)
        try:
            await asyncio.sleep(self.settings.propagation_s)
            record = self.store.pooled(model).get(version)
            await self._forget(model, version)
            table = await self._table()
            if record is not None and record.pool in table.pools:
                await self.calls.unload(table.pools[record.pool], record.model_id)
        finally:
            self.draining.discard((model, version))
            self.feed.announce([model], serve=False)

    async def _forget(self, model: str, version: str) -> None:
        await self.store.remove(model, version)  # announced to the ingresses
        self.failed.pop((model, version), None)
        self.refused.pop((model, version), None)
        shutil.rmtree(self.models_dir / model / version, ignore_errors=True)

    async def describe(
        self,
        model: str,
        version: str,
        state: ModelVersionState | None,
        table: ModelTable,
        is_default: bool,
        facts: DeploymentFacts | None,
        startup_timeout_s: float | None,
    ) -> dict[str, Any]:
        """TorchServe's describe object of a pooled version: the pool's workers, batching and
        queue (``facts``: the pool deployment's), plus ``pool``, which replicas hold it now
        (``loadedOn``, and ``loaded`` per worker) and the settings the pool decided for it."""
        record = self.store.pooled(model)[version]
        pool = table.pools.get(record.pool)
        reports: list[dict[str, Any]] = []
        if pool is not None:
            with contextlib.suppress(Exception):
                reports = await self.calls.reports(pool)
        failure = self.failed.get((model, version)) or self.refused.get((model, version))
        status = "LOAD_FAILED" if failure else (state.app_status if state else "NO_POOL")
        if (model, version) in self.checking:
            status = "LOADING"  # an asynchronous registration's first load is running
        message = failure or (table.not_ready_reason(state) if state and not state.ready else "")
        loaded_on = [r["replica"] for r in reports if record.model_id in r["models"]]
        described = describe_version(model, version, state, None, is_default, facts, startup_timeout_s)
        if not (facts and facts.replicas) and reports:  # no replica details: what the replicas said
            described["workers"] = [{"id": r["replica"], "status": "READY", "gpu": False} for r in reports]
        if described["batchSize"] is None and reports:
            described["batchSize"] = reports[0].get("max_batch_size")
            described["maxBatchDelay"] = round(reports[0].get("batch_wait_timeout_s", 0) * 1000)
        for worker in described["workers"]:
            worker["loaded"] = worker["id"] in loaded_on
        described.update(
            {
                "modelUrl": record.url,
                "runtime": record.runtime,
                "responseTimeout": record.response_timeout_s or DEFAULT_RESPONSE_TIMEOUT_S,
                "startupTimeout": record.startup_timeout_s
                if record.startup_timeout_s is not None
                else startup_timeout_s,
                "loadedAtStartup": False,
                "pool": record.pool,
                "applicationName": pool.app_name if pool else None,
                "status": status,
                "message": message,
                "loadedOn": loaded_on,
            }
        )
        notes = {
            name: {"value": described[name], "torchserve": TORCHSERVE_DEFAULTS[name]}
            for name in record.defaults
            if described.get(name) is not None
        }
        if notes:  # the pool's settings, where the registration left them to the server
            described["raytorchDefaults"] = notes
        return described
