"""The registry of models registered at runtime, persisted atomically in the state directory.

Every change rewrites ``registry.json`` (:func:`deployments.common.state_files.atomic_write`),
so a crash leaves either the old or the new registry, never half of one. A file that cannot be
used (truncated, empty, not JSON, wrong shape) must not keep the management API down: it is
moved aside (:func:`deployments.common.state_files.move_aside`) with a log line saying where,
and the server starts with what could be read. Each model is read on its own, so one bad
entry costs only that entry; fields this version does not know are ignored. No Ray here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.common.settings import ModelAppArgs
from deployments.common.state_files import atomic_write, move_aside
from handlers.errors import ConflictError, ModelNotFoundError, ModelVersionNotFoundError, validation_message

logger = logging.getLogger("ray.serve")


class RegistryRecord(BaseModel):
    """Base of the registry's records: unknown keys ignored (a file written by a newer version
    still loads); mutable, as the registry edits copies of them before saving."""

    model_config = ConfigDict(extra="ignore")


class VersionRecord(RegistryRecord):
    """One registered model version and how to bring it back."""

    version: str
    url: str = Field(..., description="What was registered (archive name in the model store).")
    app_name: str = Field(..., description="The Serve application running it.")
    args: dict[str, Any] = Field(..., description="ModelAppArgs as JSON.")
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: float | None = None
    startup_timeout_s: float | None = Field(None, description="How long its register waited for workers.")
    runtime: str = "python"
    defaults: list[str] = Field(
        default_factory=list, description="Describe's names of settings raytorch's defaults decided."
    )
    registered_at: float = Field(default_factory=time.time)


class ModelRecord(RegistryRecord):
    """A model name, its versions and which one answers /predictions/{model}."""

    default_version: str
    versions: dict[str, VersionRecord] = Field(default_factory=dict)


class RegistryState(RegistryRecord):
    """The whole registry file."""

    models: dict[str, ModelRecord] = Field(default_factory=dict)


def _read_model(name: str, raw: Any, bad: list[str]) -> ModelRecord | None:
    """One model of the file, keeping every version that reads (the others go to ``bad``)."""
    versions = raw.get("versions") if isinstance(raw, dict) else None
    if not isinstance(versions, dict):
        bad.append(f"{name} (not a model record)")
        return None
    good: dict[str, VersionRecord] = {}
    for version, entry in versions.items():
        try:
            good[str(version)] = VersionRecord.model_validate(entry)
            ModelAppArgs.model_validate(good[str(version)].args)  # describe and restore need them
        except ValidationError as exc:
            good.pop(str(version), None)
            bad.append(f"{name} {version} ({validation_message(exc.errors())[:200]})")
    if not good:
        return None
    default = raw.get("default_version")
    if default not in good:
        default = max(good, key=lambda v: good[v].registered_at)
    return ModelRecord(default_version=default, versions=good)


class RegistryStore:
    """Thread-safe access to ``registry.json``; every mutation is saved before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.state = self._load()

    def _load(self) -> RegistryState:
        if not self.path.exists():
            return RegistryState()
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or not isinstance(document.get("models", {}), dict):
                raise ValueError("it is not a JSON object with a 'models' object")
        except (OSError, ValueError, RecursionError) as exc:
            aside = move_aside(self.path)
            logger.error(
                "The registry %s cannot be read (%s): moved it to %s and started with an empty "
                "registry; registered models were not restored. Fix the file and move it back "
                "while the server is stopped to restore them.",
                self.path, str(exc)[:200] or type(exc).__name__, aside,
            )  # fmt: skip
            return RegistryState()
        state, bad = RegistryState(), []
        for name, raw in (document.get("models") or {}).items():
            record = _read_model(str(name), raw, bad)
            if record is not None:
                state.models[str(name)] = record
        if bad:
            aside = move_aside(self.path, copy=True)
            logger.error(
                "The registry %s has entries that cannot be read, left out: %s. The file as it "
                "was is kept in %s.",
                self.path, "; ".join(bad), aside,
            )  # fmt: skip
        return state

    def _save(self, state: RegistryState) -> None:
        atomic_write(self.path, state.model_dump_json(indent=2))
        self.state = state

    def get(self, model: str, version: str | None = None) -> VersionRecord:
        """A version (the default one when ``version`` is None) or 404."""
        record = self.state.models.get(model)
        if record is None:
            raise ModelNotFoundError(f"Model not found: {model}")
        chosen = version or record.default_version
        if chosen not in record.versions:
            raise ModelVersionNotFoundError.of(model, chosen)
        return record.versions[chosen]

    def add(self, model: str, entry: VersionRecord) -> None:
        """Register a new version (409 if it exists); the first version becomes the default."""
        with self._lock:
            state = self.state.model_copy(deep=True)
            record = state.models.get(model)
            if record and entry.version in record.versions:
                raise ConflictError(f"Model version {entry.version} is already registered for model {model}")
            if record is None:
                record = state.models[model] = ModelRecord(default_version=entry.version)
            record.versions[entry.version] = entry
            self._save(state)

    def update(self, model: str, entry: VersionRecord) -> None:
        """Replace an existing version's record (after scaling)."""
        with self._lock:
            state = self.state.model_copy(deep=True)
            state.models[model].versions[entry.version] = entry
            self._save(state)

    def remove(self, model: str, version: str) -> None:
        """Forget a version; the model goes when its last version does."""
        with self._lock:
            state = self.state.model_copy(deep=True)
            record = state.models[model]
            del record.versions[version]
            if not record.versions:
                del state.models[model]
            elif record.default_version == version:
                record.default_version = max(record.versions, key=lambda v: record.versions[v].registered_at)
            self._save(state)

    def set_default(self, model: str, version: str) -> None:
        """Make ``version`` answer /predictions/{model}."""
        self.get(model, version)
        with self._lock:
            state = self.state.model_copy(deep=True)
            state.models[model].default_version = version
            self._save(state)

    def defaults(self) -> dict[str, str]:
        """Model name -> default version, for the ingress."""
        return {name: record.default_version for name, record in self.state.models.items()}
