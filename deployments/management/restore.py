"""Bring registered model versions back when the server (or the management replica) starts.

Rules, each with a log line that says what happened:

- the config file's applications are built first: a config app still being built does not
  show which model version it holds, so restoring waits (up to :data:`BUILD_WAIT_S`) for them;
- a registered version that a config application already serves is not started: the config
  file wins (it is what the operator runs now), and the registration is removed from the
  state store, so the two can never both start and compete for the cluster;
- each version is restored on its own: one that cannot be (its record no longer validates, its
  code is no longer allowed) is logged and skipped, and one whose deploy fails for a passing
  reason (Serve busy) is retried :data:`ATTEMPTS` times with a growing pause;
- pooled versions are checked against the code policy too: one whose code is no longer
  allowed is refused (pool replicas are not given it, describe says why).

No Ray here: Serve is reached through the manager's ``Serve`` protocol.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deployments.common.management_args import ManagementArgs
from deployments.common.model_table import ModelTable
from deployments.common.settings import ModelAppArgs
from deployments.management.code_policy import check_registered_code
from deployments.management.ingress_routing import IngressRouting
from deployments.management.pools import PoolManager
from deployments.management.readiness import Readiness
from deployments.management.state_records import VersionRecord
from deployments.management.state_store import StateStore
from handlers.errors import RaytorchError, validation_message

logger = logging.getLogger("ray.serve")

BUILD_WAIT_S = 60.0
BUILD_POLL_S = 0.5
ATTEMPTS = 4
FIRST_RETRY_S = 2.0


class Restorer:
    """One pass of restoring (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        serve: Any,
        models_dir: Path,
        settings: ManagementArgs,
        routing: IngressRouting,
        readiness: Readiness,
        pools: PoolManager | None = None,
    ) -> None:
        self.store, self.serve, self.models_dir, self.settings = store, serve, models_dir, settings
        self.routing, self.readiness, self.pools = routing, readiness, pools

    async def run(self) -> list[str]:
        """Restore what is missing; returns ``model/version`` of each version deployed."""
        # Pooled versions have no application to start, but the same code policy: checked
        # first, before a pool replica can ask for one of them.
        for model, version, reason in self.pools.refuse_disallowed_code() if self.pools else []:
            logger.error("Registered model %s version %s cannot be restored: %s", model, version, reason)
        await self._wait_for_config_apps()
        pending = [(m, r.version) for m, r in self.store.registered() if isinstance(r, VersionRecord)]
        restored: list[str] = []
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(FIRST_RETRY_S * 2 ** (attempt - 1))
            try:
                apps, table = await self.routing.table()
            except Exception as exc:  # Serve not answering yet: the whole pass is retried
                logger.warning("Restoring registered models: cannot read Serve's state (%s); retrying", exc)
                continue
            pending = await self._pass(pending, apps, table, restored)
            if not pending:
                break
        if pending:
            names = ", ".join(f"{m}/{v}" for m, v in pending)
            logger.error("Gave up restoring registered models after %d attempts: %s", ATTEMPTS, names)
        if restored:
            logger.info("Restored registered models: %s", ", ".join(restored))
        return restored

    async def _wait_for_config_apps(self) -> None:
        deadline = time.monotonic() + BUILD_WAIT_S
        while time.monotonic() < deadline:
            try:
                building = (await self.serve.snapshot()).building
            except Exception:  # Serve not answering yet; the pass itself retries
                return
            if not building:
                return
            await asyncio.sleep(BUILD_POLL_S)
        logger.warning(
            "Restoring registered models while applications %s are still being built", sorted(building)
        )

    async def _pass(
        self, pending: list[tuple[str, str]], apps: dict[str, str], table: ModelTable, restored: list[str]
    ) -> list[tuple[str, str]]:
        """Try each pending version once; returns those to try again."""
        again = []
        for model, version in pending:
            try:
                if await self._restore_one(model, version, apps, table):
                    restored.append(f"{model}/{version}")
            except (RaytorchError, ValidationError) as exc:  # retrying would not change it
                reason = validation_message(exc.errors()) if isinstance(exc, ValidationError) else exc.message
                logger.error("Registered model %s version %s cannot be restored: %s", model, version, reason)
            except Exception as exc:
                logger.warning("Restoring model %s version %s failed (%s); will retry", model, version, exc)
                again.append((model, version))
        return again

    async def _restore_one(self, model: str, version: str, apps: dict[str, str], table: ModelTable) -> bool:
        entry = self.store.dedicated(model).get(version)
        if entry is None or entry.app_name in apps:  # unregistered meanwhile, or still running
            return False
        live = table.versions.get(model, {}).get(version)
        if live is not None:
            logger.warning(
                "Registered model %s version %s (from %s) is not started: the config file's "
                "application %r serves %s version %s, and the config file wins. The registration "
                "is removed; register the archive again under another version to serve both.",
                model, version, entry.url, live.app_name, model, version,
            )  # fmt: skip
            await self.store.remove(model, version, routing=False)  # announced; the config's version stays
            shutil.rmtree(self.models_dir / model / version, ignore_errors=True)
            return False
        args = ModelAppArgs.model_validate(entry.args)
        check_registered_code(args.model, self.settings.trusted_modules, self.settings.allow_archive_code)
        await self.serve.deploy(entry.app_name, args)
        self.readiness.watch(model, version)
        return True
