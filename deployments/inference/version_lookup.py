"""Which version a request goes to, read from the ingress's model table.

The table is kept fresh by :class:`~deployments.inference.model_directory.ModelDirectory`; a
lookup that misses asks it for a refresh first (cheaply: made-up names must not cost a
``serve.status()`` each), so a version registered a moment ago is found.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from deployments.common.model_table import ModelTable, ModelVersionState
from deployments.inference.model_directory import ModelDirectory
from handlers.errors import ModelNotFoundError, ModelNotReadyError


async def serve_snapshot() -> ModelTable:
    """What Serve runs now (one ``serve.status()``, off the event loop)."""
    status = await asyncio.to_thread(serve.status)
    return ModelTable.from_status(status.applications)


class VersionLookup:
    """Lookups in ``directory``'s table: the version to route to, readiness, versions, labels."""

    def __init__(self, directory: ModelDirectory) -> None:
        self.directory = directory

    async def resolve(self, model: str, version: str | None) -> ModelVersionState:
        """The version to route to (the default when None); 404/503 errors say why not."""
        arrived = time.monotonic()
        try:
            return self.directory.table.lookup(model, version)
        except ModelNotFoundError:  # made-up names must not cost a serve.status() each
            await self.directory.refresh_for_unknown(arrived)
        except ModelNotReadyError:
            await self.directory.refresh_since(arrived)
        return self.directory.table.lookup(model, version)

    async def readiness(
        self, model: str, version: str | None
    ) -> tuple[ModelVersionState, ModelNotReadyError | None]:
        """A version and why it cannot serve (None when it can); 404 when unknown."""
        try:
            return await self.resolve(model, version), None
        except ModelNotReadyError as exc:
            table = self.directory.table
            state = table.versions[model].get(version) if version else table.default_target(model)
            assert state is not None  # lookup raises ModelNotFoundError otherwise
            return state, exc

    def labels(self, model: str, version: str | None) -> tuple[str, str]:
        """Metric labels for a request: only names of versions the table knows."""
        return self.directory.table.labels(model, version)

    async def versions(self, model: str) -> list[str]:
        """Versions of ``model`` that Serve knows (ready or not); 404 when there are none."""
        arrived = time.monotonic()
        if model not in self.directory.table.versions:
            await self.directory.refresh_for_unknown(arrived)
        if model not in self.directory.table.versions:
            raise ModelNotFoundError(f"Model not found: {model}")
        return sorted(self.directory.table.versions[model])

    async def health_table(self) -> ModelTable:
        """A table fresh enough for health answers."""
        return await self.directory.fresh_for_health()
