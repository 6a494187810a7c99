"""The registered workflows, kept across restarts in ``<state_dir>/workflows.json``. No Ray.

Its own small file, written atomically like the model registry (``common/state_files.py``); the
model nodes themselves are ordinary registered models, persisted by the model registry. A file
that cannot be read is moved aside and the server starts without it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.common.state_files import atomic_write, move_aside

logger = logging.getLogger("ray.serve")


class WorkflowRecord(BaseModel):
    """One registered workflow: where it came from, its args and the models it registered."""

    model_config = ConfigDict(extra="ignore")

    name: str
    url: str
    args: dict[str, Any] = Field(description="WorkflowArgs as JSON (handler path, DAG, model nodes).")
    models: list[str] = Field(default_factory=list, description="The models registered for its nodes.")
    folder: str = Field("", description="Where its .war is unpacked.")


class WorkflowFile(BaseModel):
    """The file's content."""

    model_config = ConfigDict(extra="ignore")

    workflows: dict[str, WorkflowRecord] = Field(default_factory=dict)


class WorkflowStore:
    """``workflows.json``: load once, rewrite on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.state = self._load()

    def _load(self) -> WorkflowFile:
        if not self.path.exists():
            return WorkflowFile()
        try:
            return WorkflowFile.model_validate_json(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            aside = move_aside(self.path)
            logger.error(
                "Workflow file %s is unreadable (%s): kept as %s, starting without it", self.path, exc, aside
            )
            return WorkflowFile()

    def _save(self) -> None:
        atomic_write(self.path, self.state.model_dump_json(indent=2))

    def get(self, name: str) -> WorkflowRecord | None:
        """The record of ``name``, or None."""
        return self.state.workflows.get(name)

    def names(self) -> list[str]:
        """Registered workflows, sorted (TorchServe lists them so)."""
        return sorted(self.state.workflows)

    def add(self, record: WorkflowRecord) -> None:
        """Record a registered workflow."""
        with self._lock:
            self.state.workflows[record.name] = record
            self._save()

    def remove(self, name: str) -> None:
        """Forget a workflow."""
        with self._lock:
            if self.state.workflows.pop(name, None) is not None:
                self._save()
