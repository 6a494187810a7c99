"""The state store: one SQLite database for registrations, defaults and traffic policies; one
transaction per change; the files of earlier versions migrated once, bad ones kept aside."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deployments.common.routing import TrafficPolicy
from deployments.management import state_schema
from deployments.management.state_records import PooledVersion, VersionRecord
from deployments.management.state_store import StateStore
from handlers.errors import ConflictError


def dedicated(version: str, at: float, model: str = "m") -> VersionRecord:
    args = {"model": {"name": model, "version": version, "source": {"architecture": "resnet18"}}}
    return VersionRecord(
        version=version, url=f"{model}.mar", app_name=f"{model}@{version}", args=args, registered_at=at
    )


def pooled(version: str, at: float, model: str = "m") -> PooledVersion:
    return PooledVersion(
        version=version, url=f"{model}.zip", pool="small", model_id=f"{model}@{version}#t",
        spec={"name": model, "version": version}, registered_at=at,
    )  # fmt: skip


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_schema_is_one_database_with_one_table_per_kind_of_state(tmp_path: Path) -> None:
    StateStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("state.db-")) == ["state.db"]
    with sqlite3.connect(tmp_path / "state.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"versions", "defaults", "policies", "migrated"}
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (state_schema.SCHEMA_VERSION,)


def test_versions_defaults_and_policies_survive_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    run(store.add("m", dedicated("1.0", 1)))
    run(store.add("m", pooled("2.0", 2)))
    run(store.add("m", dedicated("3.0", 3)))
    assert store.default("m") == "1.0"  # the first version stays default until told
    run(store.set_policy("m", TrafficPolicy((("1.0", 90.0), ("2.0", 10.0)), "3.0", 5.0)))
    again = StateStore(tmp_path)
    assert set(again.dedicated("m")) == {"1.0", "3.0"} and set(again.pooled("m")) == {"2.0"}
    assert again.by_model_id("m@2.0#t") == ("m", again.pooled("m")["2.0"])
    assert again.policy("m") == TrafficPolicy((("1.0", 90.0), ("2.0", 10.0)), "3.0", 5.0)
    assert [(m, r.version) for m, r in again.registered()] == [("m", "1.0"), ("m", "2.0"), ("m", "3.0")]


def test_set_default_ends_a_split_in_the_same_change_and_keeps_another_shadow(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for version, at in (("1.0", 1), ("2.0", 2), ("3.0", 3)):
        run(store.add("m", dedicated(version, at)))
    run(store.set_policy("m", TrafficPolicy((("1.0", 9.0), ("2.0", 1.0)), "3.0", 5.0)))
    run(store.set_default("m", "2.0"))
    fresh = StateStore(tmp_path)
    assert (fresh.default("m"), fresh.policy("m")) == ("2.0", TrafficPolicy((), "3.0", 5.0))
    run(store.set_default("m", "3.0"))  # the shadow becomes the default: nothing left to control
    assert StateStore(tmp_path).policy("m") is None


def test_removing_the_default_hands_over_to_the_latest_registered_and_cleans_the_policy(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    run(store.add("m", dedicated("1.0", 1)))
    run(store.add("m", pooled("3.0", 3)))
    run(store.add("m", dedicated("2.0", 4)))
    run(store.set_policy("m", TrafficPolicy((), "3.0", 10.0)))
    run(store.remove("m", "1.0"))
    assert store.default("m") == "2.0"  # the most recently registered
    run(store.remove("m", "3.0"))
    assert store.policy("m") is None and store.by_model_id("m@3.0#t") is None
    run(store.remove("m", "2.0"))
    assert store.models() == set() and StateStore(tmp_path).models() == set()


def test_a_default_chosen_for_a_config_version_outlives_registrations(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    run(store.set_default("cfg", "7.0"))  # a version from the config file: not registered
    run(store.add("cfg", dedicated("8.0", 1, model="cfg")))
    assert store.default("cfg") == "7.0"
    run(store.remove("cfg", "8.0", routing=False))  # the config wins: only the registration goes
    assert StateStore(tmp_path).default("cfg") == "7.0"


def test_a_conflict_changes_nothing_and_announces_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    seen: list[list[str]] = []
    store.subscribe(seen.append)
    run(store.add("m", dedicated("1.0", 1)))
    with pytest.raises(ConflictError, match=r"Model version 1\.0 is already registered for model m"):
        run(store.add("m", pooled("1.0", 2)))  # pooled or dedicated: one version, one registration
    assert seen == [["m"]]
    assert isinstance(StateStore(tmp_path).versions("m")["1.0"], VersionRecord)


def test_a_change_that_fails_halfway_leaves_nothing_half_written(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    run(store.add("m", dedicated("1.0", 1)))

    def half(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM versions")
        raise OSError("disk gone")  # before the default and the policy are touched

    with pytest.raises(OSError):
        run(store._change(["m"], half))
    assert set(StateStore(tmp_path).versions("m")) == {"1.0"} and set(store.versions("m")) == {"1.0"}


def test_writes_run_off_the_event_loop_and_subscribers_hear_each_commit(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    threads: set[int] = set()
    transaction = store._transaction

    def spy(*args: Any) -> Any:
        threads.add(threading.get_ident())
        return transaction(*args)

    store._transaction = spy  # type: ignore[method-assign]
    heard: list[tuple[list[str], str | None]] = []
    store.subscribe(lambda models: heard.append((models, store.default(models[0]))))

    async def changes() -> int:
        await store.add("a", dedicated("1.0", 1, model="a"))
        await store.set_default("b", "2.0")
        return threading.get_ident()

    loop_thread = run(changes())
    assert threads and loop_thread not in threads
    assert heard == [(["a"], "1.0"), (["b"], "2.0")]  # called once committed, with the new state


def test_bad_rows_are_left_out_and_the_database_kept_aside(tmp_path: Path, caplog) -> None:
    store = StateStore(tmp_path)
    run(store.add("m", dedicated("1.0", 1)))
    run(store.add("m", dedicated("2.0", 2)))
    run(store.set_policy("n", TrafficPolicy((), "1.0", 5.0)))
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE versions SET record = '{\"version\": 2}' WHERE version = '2.0'")
        db.execute("UPDATE policies SET policy = '[1, 2]'")
    db.close()
    with caplog.at_level("ERROR", logger="ray.serve"):
        again = StateStore(tmp_path)
    assert set(again.versions("m")) == {"1.0"} and again.policy("n") is None
    assert "left out: m 2.0 (" in caplog.text and "n (traffic policy)" in caplog.text
    (aside,) = tmp_path.glob("state.db.bad-*")
    with sqlite3.connect(aside) as kept:  # as it was, for the operator
        assert kept.execute("SELECT count(*) FROM versions").fetchone() == (2,)
    kept.close()
    run(again.add("m", dedicated("2.0", 3)))  # the version can be registered again


# -- migration from the files of earlier versions -------------------------------------------------


def test_all_three_files_are_migrated_once_and_renamed(tmp_path: Path, caplog) -> None:
    registry = {
        "models": {
            "m": {
                "default_version": "1.0",
                "versions": {v: dedicated(v, at).model_dump() for v, at in (("1.0", 5), ("2.0", 6))},
            }
        }
    }
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    journal = [
        {"op": "add", "model": "m", "record": pooled("3.0", 1).model_dump()},  # registered first
        {"op": "add", "model": "p", "record": pooled("1.0", 2, model="p").model_dump()},
        {"op": "add", "model": "p", "record": pooled("2.0", 3, model="p").model_dump()},
        {"op": "remove", "model": "p", "version": "1.0"},
    ]
    (tmp_path / "pooled.jsonl").write_text("".join(json.dumps(line) + "\n" for line in journal))
    traffic = {
        "defaults": {"cfg": "4.0"},
        "policies": {"m": {"split": {"1.0": 90, "2.0": 10}, "shadow": None}},
    }
    (tmp_path / "traffic.json").write_text(json.dumps(traffic))
    with caplog.at_level("INFO", logger="ray.serve"):
        store = StateStore(tmp_path)
    assert "Migrated registry.json, pooled.jsonl, traffic.json" in caplog.text
    assert set(store.dedicated("m")) == {"1.0", "2.0"} and set(store.pooled("m")) == {"3.0"}
    assert set(store.pooled("p")) == {"2.0"}
    # The old rule: a set-default choice, else the default of the file with the earliest registration.
    assert store.defaults() == {"m": "3.0", "p": "2.0", "cfg": "4.0"}
    assert store.policy("m") == TrafficPolicy((("1.0", 90.0), ("2.0", 10.0)))
    assert sorted(p.name for p in tmp_path.glob("*.migrated")) == [
        "pooled.jsonl.migrated", "registry.json.migrated", "traffic.json.migrated",
    ]  # fmt: skip
    run(store.remove("m", "2.0"))
    assert set(StateStore(tmp_path).versions("m")) == {"1.0", "3.0"}  # never read twice


def test_a_file_migrated_before_a_crash_is_not_read_again(tmp_path: Path) -> None:
    legacy = {
        "models": {"m": {"default_version": "1.0", "versions": {"1.0": dedicated("1.0", 1).model_dump()}}}
    }
    (tmp_path / "registry.json").write_text(json.dumps(legacy))
    store = StateStore(tmp_path)
    run(store.remove("m", "1.0"))
    # A crash after the migration's commit, before the rename: the file is back in place.
    (tmp_path / "registry.json.migrated").replace(tmp_path / "registry.json")
    assert StateStore(tmp_path).models() == set()
    assert not (tmp_path / "registry.json").exists() and (tmp_path / "registry.json.migrated").exists()


UNREADABLE = ["", '{"models": {"m": {', "[]", "[" * 100_000]  # "[" * 100_000: a RecursionError


@pytest.mark.parametrize(
    ("name", "content"),
    [("registry.json", c) for c in [*UNREADABLE, '{"models": []}']]
    + [("traffic.json", c) for c in [*UNREADABLE, '{"policies": {"m": 3}}']],
)
def test_an_unreadable_old_file_is_moved_aside_not_fatal(
    tmp_path: Path, name: str, content: str, caplog
) -> None:
    (tmp_path / name).write_text(content)
    with caplog.at_level("ERROR", logger="ray.serve"):
        store = StateStore(tmp_path)
    assert store.models() == set()
    (aside,) = tmp_path.glob(f"{name}.bad-*")
    assert aside.read_text() == content and not (tmp_path / name).exists()  # kept for the operator
    assert "cannot be read" in caplog.text and str(aside) in caplog.text
    run(store.add("m", dedicated("1.0", 1)))  # and the store works
    assert StateStore(tmp_path).default("m") == "1.0"


def test_an_old_file_that_cannot_be_read_from_disk_is_skipped(tmp_path: Path, monkeypatch, caplog) -> None:
    (tmp_path / "pooled.jsonl").write_text("{}\n")
    real = Path.read_bytes

    def failing(path: Path) -> bytes:
        if path.name == "pooled.jsonl":
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    with caplog.at_level("ERROR", logger="ray.serve"):
        store = StateStore(tmp_path)
    assert store.models() == set() and "Input/output error" in caplog.text
    assert len(list(tmp_path.glob("pooled.jsonl.bad-*"))) == 1


def test_bad_registry_entries_are_left_out_one_by_one_and_unknown_fields_ignored(
    tmp_path: Path, caplog
) -> None:
    good = dedicated("1.0", 1).model_dump()
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
    (tmp_path / "registry.json").write_text(json.dumps(document))
    with caplog.at_level("ERROR", logger="ray.serve"):
        store = StateStore(tmp_path)
    assert store.defaults() == {"m": "1.0", "o": "1.0"}  # m's default went with its bad version
    assert "m 2.0" in caplog.text and "n (not a model record)" in caplog.text
    assert "m 3.0 (model: Value error, `source` is required" in caplog.text
    assert json.loads(next(tmp_path.glob("registry.json.bad-*")).read_text()) == document


def test_a_torn_or_damaged_journal_line_loses_only_itself(tmp_path: Path, caplog) -> None:
    lines = [
        json.dumps({"op": "add", "model": m, "record": pooled("1.0", 1, model=m).model_dump()}) for m in "ab"
    ]
    torn = lines[1][:25]
    (tmp_path / "pooled.jsonl").write_text(f"{lines[0]}\n{{not json\n[[[[\n{lines[1]}\n{torn}")
    with caplog.at_level("WARNING", logger="ray.serve"):
        store = StateStore(tmp_path)
    assert set(store.models()) == {"a", "b"} and "Skipping unreadable line 2" in caplog.text


def test_many_registrations_cost_one_row_each(tmp_path: Path) -> None:
    store = StateStore(tmp_path)

    async def many() -> None:
        for i in range(200):
            await store.add(f"m{i}", pooled("1.0", time.time(), model=f"m{i}"))

    run(many())
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT count(*) FROM versions").fetchone() == (200,)
    db.close()
    assert len(StateStore(tmp_path).models()) == 200


def test_a_database_damaged_inside_is_kept_aside_and_the_store_starts_empty(tmp_path: Path, caplog) -> None:
    store = StateStore(tmp_path)
    for i in range(300):  # enough rows for several pages
        run(store.add(f"m{i}", dedicated("1.0", i, model=f"m{i}")))
    store._db.close()
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 4] = b"\xff" * 8192  # pages in the middle: the header still reads
    path.write_bytes(bytes(data))
    with caplog.at_level("ERROR", logger="ray.serve"):
        again = StateStore(tmp_path)
    assert again.models() == set() and "cannot be read" in caplog.text
    assert len(list(tmp_path.glob("state.db.bad-*"))) == 1
    run(again.add("m", dedicated("1.0", 1)))
    assert StateStore(tmp_path).default("m") == "1.0"
