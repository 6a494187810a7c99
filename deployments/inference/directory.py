"""What every protocol reads of the model table: the :class:`Directory` the router provides.

Its own module, below the protocols and the routes that use it, so none of them imports
another to name it (``routes.py`` imports the protocols' route builders)."""

from __future__ import annotations

from typing import Any, Protocol

from deployments.common.model_table import ModelTable, ModelVersionState


class Directory(Protocol):
    """What the routes read of the model table (the router)."""

    async def health_table(self) -> ModelTable: ...
    async def versions(self, model: str) -> list[str]: ...
    async def pool_reports(self) -> dict[str, list[dict]]: ...
    async def signature(
        self, model: str, version: str | None
    ) -> tuple[ModelVersionState, dict[str, Any]]: ...
    async def readiness(self, model: str, version: str | None) -> tuple[ModelVersionState, str | None]: ...
