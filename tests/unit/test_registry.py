"""The persisted registry: atomic, survives a reload, TorchServe's conflict and default rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.management.registry import RegistryStore, VersionRecord
from handlers.errors import ConflictError, ModelNotFoundError


def record(version: str, at: float) -> VersionRecord:
    args = {"model": {"name": "m", "version": version, "source": {"architecture": "resnet18"}}}
    return VersionRecord(version=version, url="m.mar", app_name=f"m@{version}", args=args, registered_at=at)


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


@pytest.mark.parametrize("content", ["", '{"models": {"m": {', "[]", '{"models": []}', "[" * 100_000])
def test_an_unreadable_registry_is_moved_aside_not_fatal(tmp_path: Path, content: str, caplog) -> None:
    path = tmp_path / "registry.json"
    path.write_text(content)
    with caplog.at_level("ERROR", logger="ray.serve"):
        store = RegistryStore(path)
    assert store.defaults() == {}
    aside = list(tmp_path.glob("registry.json.bad-*"))
    assert len(aside) == 1 and aside[0].read_text() == content  # kept for the operator
    assert "cannot be read" in caplog.text and str(aside[0]) in caplog.text
    store.add("m", record("1.0", 1))  # and the registry works again
    assert RegistryStore(path).defaults() == {"m": "1.0"}


def test_bad_entries_are_left_out_one_by_one_and_unknown_fields_ignored(tmp_path: Path, caplog) -> None:
    path = tmp_path / "registry.json"
    good = record("1.0", 1).model_dump()
    document = {
        "format": 2,  # fields of a newer version: ignored
        "models": {
            "m": {
                "default_version": "2.0",
                "versions": {
                    "1.0": {**good, "note": "new"},
                    "2.0": {"version": 2},
                    "3.0": {**good, "version": "3.0", "args": {"model": {"name": "m"}}},
                },
            },
            "n": "not a record",
            "o": {"default_version": "1.0", "versions": {"1.0": good}},
        },
    }
    path.write_text(json.dumps(document))
    with caplog.at_level("ERROR", logger="ray.serve"):
        store = RegistryStore(path)
    assert store.defaults() == {"m": "1.0", "o": "1.0"}  # m's default went with its bad version
    assert "m 2.0" in caplog.text and "n (not a model record)" in caplog.text
    assert "m 3.0 (model: Value error, `source` is required" in caplog.text
    assert json.loads(next(tmp_path.glob("registry.json.bad-*")).read_text()) == document
