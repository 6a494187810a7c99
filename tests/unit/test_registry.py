"""The persisted registry: atomic, survives a reload, TorchServe's conflict and default rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.management.registry import RegistryStore, VersionRecord
from handlers.errors import ConflictError, ModelNotFoundError


def record(version: str, at: float) -> VersionRecord:
    return VersionRecord(version=version, url="m.mar", app_name=f"m@{version}", args={}, registered_at=at)


def test_versions_defaults_and_reload(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "registry.json")
    store.add("m", record("1.0", 1))
    store.add("m", record("2.0", 2))
    assert store.defaults() == {"m": "1.0"}  # the first version stays default until told
    store.set_default("m", "2.0")
    reloaded = RegistryStore(tmp_path / "registry.json")
    assert reloaded.defaults() == {"m": "2.0"}
    assert set(reloaded.state.models["m"].versions) == {"1.0", "2.0"}
    reloaded.remove("m", "2.0")
    assert RegistryStore(tmp_path / "registry.json").defaults() == {"m": "1.0"}
    reloaded.remove("m", "1.0")
    assert json.loads((tmp_path / "registry.json").read_text()) == {"models": {}}


def test_conflicts_and_unknowns(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "registry.json")
    store.add("m", record("1.0", 1))
    with pytest.raises(ConflictError, match="already registered"):
        store.add("m", record("1.0", 2))
    with pytest.raises(ModelNotFoundError):
        store.set_default("m", "9.9")
    with pytest.raises(ModelNotFoundError):
        store.get("nosuch")


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "registry.json")
    for i in range(5):
        store.add(f"m{i}", record("1.0", i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.json"]
