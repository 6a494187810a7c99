"""The pooled-model journal: one appended line per change, restored line by line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deployments.management import pool_registry
from deployments.management.pool_registry import PooledVersion, PoolRegistry
from handlers.errors import ConflictError


def record(version: str, at: float | None = None, model: str = "m") -> PooledVersion:
    return PooledVersion(
        version=version, url=f"{model}.zip", pool="small", model_id=f"{model}@{version}#t",
        spec={"name": model, "version": version}, registered_at=at or time.time(),
    )  # fmt: skip


def test_registrations_survive_a_restart_and_cost_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "pooled.jsonl"
    registry = PoolRegistry(path)
    for i in range(50):
        registry.add(f"m{i}", record("1.0", model=f"m{i}"))
    registry.remove("m3", "1.0")
    assert len(path.read_text().splitlines()) == 51  # appended, never rewritten
    again = PoolRegistry(path)
    assert set(again.models) == {f"m{i}" for i in range(50)} - {"m3"}
    assert again.by_model_id("m7@1.0#t") == ("m7", again.models["m7"]["1.0"])
    assert again.by_model_id("m3@1.0#t") is None
    with pytest.raises(ConflictError, match="already registered"):
        again.add("m7", record("1.0", model="m7"))


def test_the_default_is_the_first_version_then_the_latest_registered(tmp_path: Path) -> None:
    registry = PoolRegistry(tmp_path / "pooled.jsonl")
    registry.add("m", record("1.0", 1.0))
    registry.add("m", record("3.0", 3.0))
    registry.add("m", record("2.0", 4.0))
    assert registry.defaults["m"] == "1.0"
    registry.remove("m", "1.0")
    assert registry.defaults["m"] == "2.0"  # the most recently registered, as registry.json does
    assert PoolRegistry(tmp_path / "pooled.jsonl").defaults["m"] == "2.0"  # replayed the same way


def test_a_torn_or_damaged_line_loses_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "pooled.jsonl"
    registry = PoolRegistry(path)
    registry.add("a", record("1.0", model="a"))
    registry.add("b", record("1.0", model="b"))
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + "{not json\n" + lines[1] + "\n" + lines[1][:25])  # + a torn append
    restored = PoolRegistry(path)
    assert set(restored.models) == {"a", "b"}
    restored.add("c", record("1.0", model="c"))  # the file was rewritten clean: the next line stands alone
    assert set(PoolRegistry(path).models) == {"a", "b", "c"}


def test_the_journal_is_compacted_when_dead_lines_dominate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_registry, "COMPACT_MIN_LINES", 10)
    path = tmp_path / "pooled.jsonl"
    registry = PoolRegistry(path)
    registry.add("keep", record("1.0"))
    for _ in range(10):
        registry.add("churn", record("1.0"))
        registry.remove("churn", "1.0")
    assert len(path.read_text().splitlines()) <= 10
    assert set(PoolRegistry(path).models) == {"keep"}
