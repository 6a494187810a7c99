"""Settings read from the environment, all in one place: ``RAYTORCH_STATE_DIR``,
``RAYTORCH_MODEL_STORE``, ``RAYTORCH_LOG_DIR`` and ``RAYTORCH_TOKEN``.

Where one is set (and not empty) it wins over the config file's ``args:`` (the launcher and the
tests point a server at a state directory this way). Read when asked, not at import, so a
process sees the environment it runs with. No Ray here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(BaseSettings):
    """The ``RAYTORCH_*`` environment variables; unset or empty ones are None."""

    model_config = SettingsConfigDict(env_prefix="RAYTORCH_", env_ignore_empty=True, extra="ignore")

    state_dir: Path | None = Field(None, description="Key file, state database, unpacked archives.")
    model_store: Path | None = Field(None, description="Where `url=` archives are looked up.")
    log_dir: Path | None = Field(None, description="Where access.log goes.")
    token: str | None = Field(None, description="The management (and inference) bearer token.")
