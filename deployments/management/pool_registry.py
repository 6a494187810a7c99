"""The registry of pooled model versions, persisted as a journal: one JSON line per change.

Registering the 1,000th pooled model appends one line (and fsyncs it) instead of rewriting a
registry of 1,000 entries, which would make bulk registration quadratic. The journal is
rewritten (atomically) only when dead lines outnumber live ones. A line that cannot be read (a
crash in the middle of an append, a damaged file) is skipped with a warning and the rest is
restored; the file is then rewritten clean so later appends cannot join a torn line. No Ray here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.common.state_files import atomic_write
from handlers.errors import ConflictError

logger = logging.getLogger("ray.serve")
COMPACT_MIN_LINES = 1000


class PooledVersion(BaseModel):
    """One pooled model version: where its files are (in the spec) and which pool serves it."""

    model_config = ConfigDict(extra="forbid")

    version: str
    url: str = Field(..., description="What was registered (archive name in the model store).")
    pool: str
    model_id: str = Field(..., description="Serve's multiplexed model id of this registration.")
    spec: dict[str, Any] = Field(..., description="The ModelSpec as JSON (base_dir: its files).")
    response_timeout_s: float | None = None
    startup_timeout_s: float | None = Field(None, description="How long its register waited for the check.")
    runtime: str = "python"
    defaults: list[str] = Field(
        default_factory=list, description="Describe's names of settings the registration left to the server."
    )
    registered_at: float = Field(default_factory=time.time)


class PoolRegistry:
    """Pooled versions by model, with each model's default (the first version registered, then,
    once the default is unregistered, the most recently registered one: the dedicated registry's
    rule). Thread-safe; every change is on disk before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.models: dict[str, dict[str, PooledVersion]] = {}
        self.defaults: dict[str, str] = {}
        self._by_id: dict[str, tuple[str, PooledVersion]] = {}
        self._lines = 0
        self._lock = threading.Lock()
        if self.path.is_file() and self._load():
            self._compact()

    def _load(self) -> bool:
        """Replay the journal; True when some line had to be skipped."""
        damaged = False
        for number, line in enumerate(self.path.read_bytes().split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                self._apply(json.loads(line))
                self._lines += 1
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                logger.warning("Skipping unreadable line %d of %s: %s", number, self.path, exc)
                damaged = True
        return damaged

    def _apply(self, change: dict[str, Any]) -> None:
        model = change["model"]
        if change["op"] == "add":
            record = PooledVersion.model_validate(change["record"])
            self.models.setdefault(model, {})[record.version] = record
            self._by_id[record.model_id] = (model, record)
            self.defaults.setdefault(model, record.version)
        elif change["op"] == "remove":
            versions = self.models.get(model, {})
            record = versions.pop(change["version"], None)
            if record is not None:
                self._by_id.pop(record.model_id, None)
            if not versions:
                self.models.pop(model, None)
                self.defaults.pop(model, None)
            elif self.defaults.get(model) == change["version"]:
                self.defaults[model] = max(versions.values(), key=lambda r: r.registered_at).version
        else:
            raise ValueError(f"unknown operation {change['op']!r}")

    def _write(self, change: dict[str, Any]) -> None:
        line = (json.dumps(change, separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as journal:
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())
        self._apply(change)
        self._lines += 1
        if self._lines > max(COMPACT_MIN_LINES, 2 * len(self._by_id)):
            self._compact()

    def _compact(self) -> None:
        records = sorted(
            ((model, r) for model, versions in self.models.items() for r in versions.values()),
            key=lambda item: item[1].registered_at,
        )
        lines = [
            json.dumps({"op": "add", "model": m, "record": r.model_dump(mode="json")}, separators=(",", ":"))
            for m, r in records
        ]
        atomic_write(self.path, "".join(line + "\n" for line in lines))
        self._lines = len(lines)

    def add(self, model: str, record: PooledVersion) -> None:
        """Register a pooled version (409 when it exists)."""
        with self._lock:
            if record.version in self.models.get(model, {}):
                raise ConflictError(f"Model version {record.version} is already registered for model {model}")
            self._write({"op": "add", "model": model, "record": record.model_dump(mode="json")})

    def remove(self, model: str, version: str) -> None:
        """Forget a pooled version (nothing happens when it is not registered)."""
        with self._lock:
            if version in self.models.get(model, {}):
                self._write({"op": "remove", "model": model, "version": version})

    def versions(self, model: str) -> dict[str, PooledVersion]:
        """The pooled versions of ``model`` (empty when none)."""
        return self.models.get(model, {})

    def by_model_id(self, model_id: str) -> tuple[str, PooledVersion] | None:
        """(model, record) of a multiplexed model id, or None when it is not registered."""
        return self._by_id.get(model_id)
