"""What the state store keeps of each registered model version: a dedicated application's
record (:class:`VersionRecord`) or a pooled version's (:class:`PooledVersion`), as JSON in one
row of ``versions`` (:mod:`deployments.management.state_store`). No Ray here."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Registration(BaseModel):
    """What every registration keeps, dedicated or pooled: what was registered, its timeouts
    and runtime, and the settings the server decided for it."""

    version: str
    url: str = Field(..., description="What was registered (archive name in the model store, or a URL).")
    response_timeout_s: float | None = None
    startup_timeout_s: float | None = Field(
        None, description="How long its register waited for workers (pooled: for the first load)."
    )
    runtime: str = "python"
    defaults: list[str] = Field(
        default_factory=list, description="Describe's names of settings raytorch's defaults decided."
    )
    registered_at: float = Field(default_factory=time.time)


class VersionRecord(Registration):
    """One version registered as its own Serve application, and how to bring it back.

    Unknown keys are ignored, so a record written by a newer version still loads."""

    model_config = ConfigDict(extra="ignore")

    app_name: str = Field(..., description="The Serve application running it.")
    args: dict[str, Any] = Field(..., description="ModelAppArgs as JSON.")
    min_workers: int = 1
    max_workers: int = 1


class PooledVersion(Registration):
    """One pooled model version: where its files are (in the spec) and which pool serves it."""

    model_config = ConfigDict(extra="forbid")

    pool: str
    model_id: str = Field(..., description="Serve's multiplexed model id of this registration.")
    spec: dict[str, Any] = Field(..., description="The ModelSpec as JSON (base_dir: its files).")


Record = VersionRecord | PooledVersion
