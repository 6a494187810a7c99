"""Traffic control between a model's versions: weighted splits (a 90/10 canary) and shadow
traffic, set through ``PUT /models/{model}/traffic`` and shown by ``GET`` and describe.

A split shares the requests that name no version between the listed versions, in proportion to
their weights; a shadow version also receives a copy of ``shadow_percent`` % of them and its
answers are measured but never returned. Requests that name a version always go to it.
``set-default`` ends a split (everything goes to the new default). No Ray here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from typing import Any

from deployments.common.model_table import ModelTable
from deployments.common.routing import TrafficPolicy
from deployments.management.ingress_routing import IngressRouting
from deployments.management.state_store import StateStore
from handlers.errors import BadInputError, ModelNotFoundError, ModelVersionNotFoundError
from handlers.spec import VERSION_PATTERN

_VERSION = re.compile(VERSION_PATTERN)
MAX_SPLIT = 16


def parse_split(text: str) -> tuple[tuple[str, float], ...]:
    """``1.0:90,2.0:10`` -> ((version, weight), ...); 400 naming what is wrong."""
    pairs = []
    for part in text.split(","):
        version, sep, weight = part.strip().rpartition(":")
        if not sep or not _VERSION.fullmatch(version):
            raise BadInputError(f"split: {part.strip()!r} is not version:weight (e.g. split=1.0:90,2.0:10)")
        try:
            value = float(weight)
        except ValueError:
            raise BadInputError(
                f"split: the weight of version {version} is not a number: {weight!r}"
            ) from None
        if not 0 <= value <= 1e6:
            raise BadInputError(f"split: the weight of version {version} must be between 0 and 1000000")
        pairs.append((version, value))
    versions = [v for v, _ in pairs]
    if len(set(versions)) != len(versions):
        raise BadInputError("split: a version is listed twice")
    if len(pairs) > MAX_SPLIT:
        raise BadInputError(f"split: at most {MAX_SPLIT} versions")
    if not any(w > 0 for _, w in pairs):
        raise BadInputError("split: at least one weight must be above 0")
    return tuple(pairs)


class TrafficControl:
    """The traffic routes' operations: checked against the versions the ingresses route to
    (``routing``), recorded in the state store (which announces them)."""

    def __init__(self, store: StateStore, routing: IngressRouting, propagation_s: float) -> None:
        self.store = store
        self.routing = routing
        self._propagation_s = propagation_s

    async def _table(self) -> ModelTable:
        return (await self.routing.table())[1]

    async def _versions(self, model: str) -> tuple[ModelTable, set[str]]:
        table = await self._table()
        versions = set(table.versions.get(model, {}))
        if not versions:
            raise ModelNotFoundError(f"Model not found: {model}")
        return table, versions

    async def get(self, model: str) -> dict[str, Any]:
        """The model's traffic: default version, effective split, shadow."""
        table, _ = await self._versions(model)
        return self.summary(model, table.default_version(model))

    def summary(self, model: str, default: str | None) -> dict[str, Any]:
        """What GET /models/{model}/traffic answers."""
        policy = self.store.policy(model)
        split = policy.percents() if policy and policy.split else ({default: 100.0} if default else {})
        shadow = policy.to_dict()["shadow"] if policy else None
        return {"modelName": model, "defaultVersion": default, "split": split, "shadow": shadow}

    async def set(
        self, model: str, split: str | None, shadow: str | None, shadow_percent: float
    ) -> dict[str, Any]:
        """Replace the model's policy; returns once the ingresses route by it."""
        if split is None and shadow is None:
            raise BadInputError("Give split=version:weight,... and/or shadow=version")
        table, versions = await self._versions(model)
        pairs = parse_split(split) if split is not None else ()
        for version in [v for v, _ in pairs] + ([shadow] if shadow else []):
            if version not in versions:
                raise ModelVersionNotFoundError.of(model, version)
        if shadow is not None and dict(pairs).get(shadow, 0) > 0:
            raise BadInputError(f"Version {shadow} cannot be the shadow: the split sends it live traffic")
        policy = TrafficPolicy(pairs, shadow, shadow_percent if shadow else 0.0)
        await self.store.set_policy(model, policy)
        await self._announced(model)
        return self.summary(model, table.default_version(model))

    async def set_default(self, model: str, version: str, registered: Collection[str]) -> dict[str, str]:
        """set-default: ``version`` (registered, pooled or from the config) takes the requests
        without a version; a split ends. ``registered``: the model's dedicated registrations.
        Answers, in TorchServe's words, once the ingresses route to it."""
        table = await self._table()
        if version not in table.versions.get(model, {}) and version not in registered:
            if model not in table.versions and not registered:
                raise ModelNotFoundError(f"Model not found: {model}")
            # TorchServe's sentence for this call (unlike its others, without colons).
            raise ModelVersionNotFoundError(f"Model version {version} does not exist for model {model}")
        await self.store.set_default(model, version)
        await self._announced(model)
        return {"status": f'Default version successfully updated for model "{model}" to "{version}"'}

    async def clear(self, model: str) -> dict[str, Any]:
        """Remove the model's policy: requests without a version go to the default again."""
        table, _ = await self._versions(model)
        await self.store.set_policy(model, None)
        await self._announced(model)
        return self.summary(model, table.default_version(model))

    async def _announced(self, model: str) -> None:
        # The store announced the change; answer once every ingress routes by it.
        await asyncio.sleep(self._propagation_s)

    def version_fields(self, model: str, version: str, default: str | None) -> dict[str, float]:
        """Describe's view of one version: its share of the traffic without a version, and of
        the shadow copies."""
        policy = self.store.policy(model)
        if policy is not None and policy.split:
            live = policy.percents().get(version, 0.0)
        else:
            live = 100.0 if version == default else 0.0
        shadow = policy.shadow_percent if policy is not None and policy.shadow == version else 0.0
        return {"trafficPercent": live, "shadowPercent": shadow}
