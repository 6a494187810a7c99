"""TorchServe's read-only management calls: list the models, describe their versions.

Describe joins three sources: the state store (what was registered, dedicated or into a pool,
with which parameters), Serve's model table (what runs and whether it serves) and Serve's
replica details (workers, pending requests: a pooled version's are its pool's); with
``customized=true`` it also asks one replica for its handler's metadata (a pool replica loads
the model for it). Every version also shows its share of the traffic (traffic.py). No Ray here:
Serve is reached through :class:`~deployments.management.serve_control.Serve`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from deployments.common.model_table import ModelTable, ModelVersionState
from deployments.management.describe import DeploymentFacts, describe_version
from deployments.management.pools import PoolManager
from deployments.management.serve_control import Serve
from deployments.management.state_store import StateStore
from deployments.management.traffic import TrafficControl
from handlers.errors import (
    ModelNotFoundError,
    ModelNotReadyError,
    ModelVersionNotFoundError,
    RequestTimeoutError,
)

logger = logging.getLogger("ray.serve")
# Describe with customized=true asks a replica; it must not wait behind a long queue forever.
HANDLER_METADATA_TIMEOUT_S = 10.0


def not_found(model: str, version: str | None, table: ModelTable, store: StateStore) -> ModelNotFoundError:
    """404 for an unknown model, or for an unknown version of a known one (TorchServe's wording).
    ``table`` has the routing applied: pooled versions are in it."""
    if model not in table.versions and not store.versions(model):
        return ModelNotFoundError(f"Model not found: {model}")
    return ModelVersionNotFoundError.of(model, version)


class Catalog:
    """Answers list and describe from the state store, the traffic policies and Serve's state."""

    def __init__(
        self,
        serve: Serve,
        store: StateStore,
        startup_timeout_s: float,
        pools: PoolManager,
        traffic: TrafficControl,
    ) -> None:
        self.serve = serve
        self.store = store
        self.startup_timeout_s = startup_timeout_s
        self.pools = pools
        self.traffic = traffic

    async def describe(
        self, table: ModelTable, model: str, version: str | None, customized: bool = False
    ) -> list[dict[str, Any]]:
        """TorchServe's describe: one object per version (``version='all'`` for every one).

        With ``customized`` (one version), the handler's own metadata is added from one of the
        version's replicas as ``customizedMetadata``: 503 when it has none running.
        """
        live, registered = table.versions.get(model, {}), self.store.dedicated(model)
        if not live and not registered:
            raise ModelNotFoundError(f"Model not found: {model}")
        default = table.default_version(model)
        versions = sorted(set(live) | set(registered)) if version == "all" else [version or default]
        for v in versions:
            if v not in live and v not in registered:
                raise not_found(model, v, table, self.store)
        pooled = self.store.pooled(model)
        described = []
        for v in versions:
            state = live.get(v)
            facts = await self._facts(state)
            if v in pooled:
                item = await self.pools.describe(
                    model, v, state, table, v == default, facts, self.startup_timeout_s
                )
            else:
                item = describe_version(
                    model, v, state, registered.get(v), v == default, facts, self.startup_timeout_s
                )
            item.update(self.traffic.version_fields(model, v, default))
            described.append(item)
        if customized and version != "all":
            described[0]["customizedMetadata"] = await self._handler_metadata(model, live.get(versions[0]))
        return described

    async def _facts(self, state: ModelVersionState | None) -> DeploymentFacts | None:
        if state is None:
            return None
        try:
            return await self.serve.deployment_facts(state.app_name, state.deployment_name)
        except Exception as exc:  # describe still answers from the state store and the table
            logger.warning("No replica details for %s: %s", state.app_name, exc)
            return None

    async def _handler_metadata(self, model: str, state: ModelVersionState | None) -> Any:
        if state is None or not state.ready:
            raise ModelNotReadyError(
                f'Model "{model}" has no worker to serve describe request. '
                "Please use scale workers API to add workers.",
                retry_after_s=5,
            )
        try:
            return await self.serve.handler_metadata(
                state.app_name, state.deployment_name, HANDLER_METADATA_TIMEOUT_S, state.model_id
            )
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f'Model "{model}" did not describe itself within {HANDLER_METADATA_TIMEOUT_S:g}s'
            ) from None

    def list_models(self, table: ModelTable) -> list[dict[str, str]]:
        """Every model (registered or from the config), with the URL it came from."""
        result = []
        for name in sorted(set(table.versions) | {model for model, _ in self.store.registered()}):
            default = table.default_version(name) or ""
            entry = self.store.versions(name).get(default)
            state = table.versions.get(name, {}).get(default)
            url = entry.url if entry else f"config:{state.app_name if state else name}"
            result.append({"modelName": name, "modelUrl": url})
        return result
