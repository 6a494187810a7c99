"""The persisted registry: atomic, survives a reload, TorchServe's conflict and default rules."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from deployments.auth import UnauthorizedError, check_bearer, load_or_create_token
from deployments.registry_store import ConflictError, RegistryStore, VersionRecord
from handlers.errors import ModelNotFoundError


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


def test_token_from_environment_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAYTORCH_TOKEN", "from-env")
    assert load_or_create_token(tmp_path) == "from-env"
    assert not (tmp_path / "key_file.json").exists()


def test_generated_token_is_private_and_stable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAYTORCH_TOKEN", raising=False)
    token = load_or_create_token(tmp_path)
    assert len(token) >= 24 and load_or_create_token(tmp_path) == token
    mode = stat.S_IMODE(os.stat(tmp_path / "key_file.json").st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer wrong"])
def test_bad_bearer_headers(header: str | None) -> None:
    with pytest.raises(UnauthorizedError):
        check_bearer(header, "right")


def test_good_bearer_header() -> None:
    check_bearer("Bearer right", "right")
