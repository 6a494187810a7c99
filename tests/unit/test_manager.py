"""ModelManager over a fake Serve (tests/fixtures/management.py): the management rules
without a cluster; the manager, registry, archive handling and routing feed are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from deployments.common.management_args import ManagementArgs
from deployments.common.routing import RoutingUpdate
from deployments.management.manager import ModelManager
from deployments.management.register_params import RegisterParams
from handlers.errors import (
    BadInputError,
    ConflictError,
    DefaultVersionError,
    InsufficientResourcesError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelVersionNotFoundError,
    RequestTimeoutError,
)
from tests.fixtures.management import FakeServe, make_archive


@pytest.fixture
def serve() -> FakeServe:
    return FakeServe()


@pytest.fixture
def manager(serve: FakeServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelManager:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    settings = ManagementArgs(
        state_dir=str(tmp_path / "state"),
        model_store=str(tmp_path / "store"),
        propagation_s=0,
        trusted_modules=["tests.fixtures"],
    )
    return ModelManager(settings, serve)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def register(manager: ModelManager, url: str, **params: Any) -> tuple[int, dict]:
    return run(manager.register(RegisterParams(url=url, **params)))


def test_register_deploys_persists_and_answers_like_torchserve(
    manager: ModelManager, serve: FakeServe
) -> None:
    url = make_archive(manager.model_store, "m", "1.0")
    status, body = register(manager, url)
    assert (status, body) == (200, {"status": 'Model "m" Version: 1.0 registered with 1 initial workers'})
    assert serve.deployed == ["m@1.0"]
    assert (manager.models_dir / "m" / "1.0" / "tiny.pth").is_file()
    assert ModelManager(manager.settings, serve).store.defaults() == {"m": "1.0"}  # survives a restart


def test_a_second_registration_of_a_version_is_409(manager: ModelManager, serve: FakeServe) -> None:
    url = make_archive(manager.model_store, "m", "1.0")
    register(manager, url)
    with pytest.raises(ConflictError, match=r"Model version 1\.0 is already registered for model m"):
        register(manager, url)
    serve.add_config_model("cfg", "1.0")  # a model from the config file counts too
    with pytest.raises(ConflictError):
        register(manager, make_archive(manager.model_store, "cfg", "1.0"))
    assert list((manager.models_dir / ".incoming").iterdir()) == []  # losers leave no files


def test_registered_models_share_cores_like_torchserve_workers(
    manager: ModelManager, serve: FakeServe
) -> None:
    serve.free = {"CPU": 0.0}  # the config's models hold every CPU of a small machine
    for version in ("1.0", "2.0", "3.0"):
        assert register(manager, make_archive(manager.model_store, "m", version))[0] == 200
    assert run(manager.scale("m", "1.0", 3, 3, synchronous=True))[0] == 200
    assert {args.resources.num_cpus for args in serve.deployed_args.values()} == {0.0}


def test_explicit_cpus_and_gpus_are_reserved_and_checked(manager: ModelManager, serve: FakeServe) -> None:
    serve.free = {"CPU": 0.2}
    with pytest.raises(InsufficientResourcesError, match=r"CPU 0\.5 needed, 0\.2 free"):
        register(manager, make_archive(manager.model_store, "m", "1.0"), num_cpus=0.5)
    serve.free, serve.total_gpus = {"CPU": 2.0, "GPU": 0.25}, 1.0
    with pytest.raises(InsufficientResourcesError, match=r"GPU 0\.5 needed, 0\.25 free"):
        register(manager, make_archive(manager.model_store, "m", "1.0"), num_gpus=0.5)
    assert serve.deployed == [] and manager.store.defaults() == {}
    register(manager, make_archive(manager.model_store, "m", "1.0"), num_gpus=0.25, num_cpus=1)
    resources = serve.deployed_args["m@1.0"].resources
    assert (resources.num_cpus, resources.num_gpus) == (1.0, 0.25)


def test_a_model_that_fails_to_load_is_removed_with_the_reason(
    manager: ModelManager, serve: FakeServe
) -> None:
    serve.fail.add("m@1.0")
    with pytest.raises(ModelLoadError, match="weights missing"):
        register(manager, make_archive(manager.model_store, "m", "1.0"))
    assert serve.deleted == ["m@1.0"] and manager.store.defaults() == {}


def test_default_version_rules(manager: ModelManager, serve: FakeServe) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    register(manager, make_archive(manager.model_store, "m", "2.0"))
    described = run(manager.describe("m", "all"))
    assert [(d["modelVersion"], d["isDefault"]) for d in described] == [("1.0", True), ("2.0", False)]
    answer = run(manager.set_default("m", "2.0"))
    assert answer == {"status": 'Default version successfully updated for model "m" to "2.0"'}
    assert run(manager.describe("m", None))[0]["modelVersion"] == "2.0"
    # As TorchServe: the default goes only as the last version (403), and stays meanwhile.
    for version in (None, "2.0"):
        with pytest.raises(DefaultVersionError, match=r"^Cannot remove default version for model m$"):
            run(manager.unregister("m", version))
    assert serve.deleted == [] and manager.store.defaults() == {"m": "2.0"}
    run(manager.unregister("m", "1.0"))
    run(manager.unregister("m", None))  # now the last one
    assert serve.deleted == ["m@1.0", "m@2.0"] and manager.store.defaults() == {}


def test_set_default_errors_use_torchserve_wording(manager: ModelManager) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    # Unlike its other version errors, TorchServe words this one without colons.
    wording = r"^Model version 3\.3\.3 does not exist for model m$"
    with pytest.raises(ModelVersionNotFoundError, match=wording):
        run(manager.set_default("m", "3.3.3"))
    with pytest.raises(ModelNotFoundError, match=r"^Model not found: other$"):
        run(manager.set_default("other", "1.0"))


def test_routing_changes_are_announced_to_waiting_ingresses(manager: ModelManager) -> None:
    async def scenario() -> tuple[bool, RoutingUpdate]:
        first = await manager.routing_changes(-1, 0, "")  # an ingress starting: everything
        waiting = asyncio.ensure_future(manager.routing_changes(first.version, 30, first.epoch))
        await asyncio.sleep(0.05)
        waited = not waiting.done()
        await manager.register(RegisterParams(url=make_archive(manager.model_store, "m", "1.0")))
        return waited, await asyncio.wait_for(waiting, 1)

    waited, update = run(scenario())
    assert waited  # the long poll holds while nothing changes...
    assert update.models["m"].default == "1.0" and update.serve  # ...and answers at once


def test_unknown_models_and_config_models(manager: ModelManager, serve: FakeServe) -> None:
    with pytest.raises(ModelNotFoundError, match="Model not found: nosuch"):
        run(manager.describe("nosuch", None))
    serve.add_config_model("cfg", "1.0")
    with pytest.raises(BadInputError, match="comes from the server's config file"):
        run(manager.scale("cfg", None, 2, 2, synchronous=False))
    for call in (manager.unregister("cfg", "9.9"), manager.describe("cfg", "9.9")):
        with pytest.raises(ModelNotFoundError, match=r"^Model version: 9\.9 does not exist for model: cfg$"):
            run(call)
    assert run(manager.list_models()) == [{"modelName": "cfg", "modelUrl": "config:cfg"}]


def test_restore_brings_back_what_is_missing(manager: ModelManager, serve: FakeServe) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    serve.apps.clear()  # the whole server restarted: Serve runs nothing of ours
    fresh = ModelManager(manager.settings, serve)
    assert run(fresh.restore()) == ["m/1.0"]
    assert "m@1.0" in serve.apps


def test_zero_initial_workers_answers_at_once(manager: ModelManager, serve: FakeServe) -> None:
    for synchronous in (True, False):
        version = "1.0" if synchronous else "2.0"
        url = make_archive(manager.model_store, "m", version)
        status, body = register(manager, url, initial_workers=0, synchronous=synchronous)
        assert status == 200, body  # TorchServe: nothing to wait for, even asynchronously
        assert body["status"] == (
            f'Model "m" Version: {version} registered with 0 initial workers. '
            "Use scale workers API to add workers for the model."
        )
    assert run(manager.describe("m", "1.0"))[0]["minWorkers"] == 0


def test_a_startup_deadline_that_passes_removes_the_version(manager: ModelManager, serve: FakeServe) -> None:
    with pytest.raises(RequestTimeoutError):
        register(manager, make_archive(manager.model_store, "m", "1.0"), startup_timeout=0)
    assert serve.deleted == ["m@1.0"] and manager.store.defaults() == {}
    # No worker to start, no startup to time out (TorchServe's Postman case).
    url = make_archive(manager.model_store, "m", "1.0")
    assert register(manager, url, startup_timeout=0, initial_workers=0)[0] == 200


def test_an_empty_url_names_no_archive(manager: ModelManager) -> None:
    with pytest.raises(ModelNotFoundError):
        register(manager, "")


def test_scale_answers_name_the_version_and_failures(manager: ModelManager, serve: FakeServe) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    assert run(manager.scale("m", None, 2, 2, True)) == (200, {"status": "Workers scaled to 2 for model: m"})
    assert run(manager.scale("m", "1.0", 1, 1, True))[1] == {
        "status": "Workers scaled to 1 for model: m, version: 1.0"
    }
    with pytest.raises(ModelVersionNotFoundError, match=r"^Model version: 0\.0 does not exist for model: m$"):
        run(manager.scale("m", "0.0", 1, 1, True))
    serve.fail.add("m@1.0")  # the new replicas cannot load: 500 with the reason, not a hang
    with pytest.raises(ModelLoadError, match=r"Failed to start workers for model m version: 1\.0: .*weights"):
        run(manager.scale("m", None, 2, 2, True))


def test_describe_has_torchserve_fields_and_says_where_our_defaults_differ(
    manager: ModelManager, serve: FakeServe
) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"), batch_size=4)
    described = run(manager.describe("m", None))[0]
    assert described["jobQueueStatus"] == {"remainingCapacity": 64 - 3, "pendingRequests": 3}
    assert [w["status"] for w in described["workers"]] == ["READY"]
    assert (described["runtime"], described["batchSize"], described["maxBatchDelay"]) == ("python", 4, 0)
    # The batch size came from the request; the worker count and delay from raytorch's defaults.
    assert described["raytorchDefaults"] == {
        "minWorkers": {"value": 1, "torchserve": 0},
        "maxBatchDelay": {"value": 0, "torchserve": 100},
    }
    assert "customizedMetadata" not in described


def test_customized_describe_asks_a_replica(manager: ModelManager, serve: FakeServe) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    described = run(manager.describe("m", "1.0", customized=True))[0]
    assert described["customizedMetadata"] == {"handler": "image_classifier", "app": "m@1.0"}
    assert "customizedMetadata" not in run(manager.describe("m", "all", customized=True))[0]
    register(manager, make_archive(manager.model_store, "idle", "1.0"), initial_workers=0)
    with pytest.raises(ModelNotReadyError, match='Model "idle" has no worker to serve describe request'):
        run(manager.describe("idle", None, customized=True))


def test_racing_registrations_of_one_version_never_mix_files(manager: ModelManager, serve: FakeServe) -> None:
    a = make_archive(manager.model_store, "m", "1.0", "a.zip")
    b = make_archive(manager.model_store, "m", "1.0", "b.zip")

    async def race() -> list[Any]:
        both = (manager.register(RegisterParams(url=url)) for url in (a, b))
        return await asyncio.gather(*both, return_exceptions=True)

    results = run(race())
    assert sorted(str(r[0]) if isinstance(r, tuple) else type(r).__name__ for r in results) == [
        "200",
        "ConflictError",
    ]
    winner = manager.store.dedicated("m")["1.0"].url
    assert (manager.models_dir / "m" / "1.0" / "marker.txt").read_text() == winner  # its own files
    assert serve.deployed == ["m@1.0"]
    assert list((manager.models_dir / ".incoming").iterdir()) == []  # the loser left nothing


def test_a_registered_version_the_config_also_serves_is_not_started(
    manager: ModelManager, serve: FakeServe, caplog: pytest.LogCaptureFixture
) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    register(manager, make_archive(manager.model_store, "m", "2.0"))
    serve.apps.clear()  # the server restarts, and its config file now declares m 1.0 too
    serve.add_config_model("m", "1.0")
    serve.deployed.clear()
    fresh = ModelManager(manager.settings, serve)
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert run(fresh.restore()) == ["m/2.0"]
    assert serve.deployed == ["m@2.0"]  # never m@1.0: one winner, the config
    assert "config file wins" in caplog.text and "'m' serves m version 1.0" in caplog.text
    assert set(fresh.store.versions("m")) == {"2.0"}
    assert not (fresh.models_dir / "m" / "1.0").exists()


def test_restore_waits_for_config_apps_to_be_built(
    manager: ModelManager, serve: FakeServe, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.management import restore

    monkeypatch.setattr(restore, "BUILD_POLL_S", 0.01)
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    serve.apps.clear()
    serve.deployed.clear()
    serve.building.add("m")  # the config's app "m" is still running its builder

    async def scenario() -> list[str]:
        restoring = asyncio.ensure_future(ModelManager(manager.settings, serve).restore())
        await asyncio.sleep(0.1)
        serve.building.clear()  # built: it holds m 1.0
        serve.add_config_model("m", "1.0")
        return await restoring

    assert run(scenario()) == []
    assert serve.deployed == []


def test_each_version_is_restored_on_its_own_and_retried(
    manager: ModelManager, serve: FakeServe, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from deployments.management import restore

    monkeypatch.setattr(restore, "FIRST_RETRY_S", 0.01)
    for name in ("a", "b", "c"):
        register(manager, make_archive(manager.model_store, name, "1.0"))
    with sqlite3.connect(manager.store.path) as db:
        for name, edit in (
            ("a", lambda r: r["args"]["model"].update(source={"factory": "os:system"})),
            ("b", lambda r: r["args"]["resources"].update(num_replicas="many")),
            ("c", lambda r: r.update(written_by="a newer raytorch")),  # unknown fields are ignored
        ):
            (text,) = db.execute("SELECT record FROM versions WHERE model = ?", (name,)).fetchone()
            record = json.loads(text)
            edit(record)
            db.execute("UPDATE versions SET record = ? WHERE model = ?", (json.dumps(record), name))
    db.close()
    serve.apps.clear()
    serve.deployed.clear()
    serve.deploy_failures = 1  # Serve busy once: c is retried
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert run(ModelManager(manager.settings, serve).restore()) == ["c/1.0"]
    assert serve.deployed == ["c@1.0"]
    assert "model a version 1.0 cannot be restored: source.factory 'os:system' is not allowed" in caplog.text
    assert "left out: b 1.0 (resources.num_replicas" in caplog.text  # unreadable: dropped on load
    assert len(list(manager.state_dir.glob("state.db.bad-*"))) == 1  # the database as it was
    assert "Restoring model c version 1.0 failed (Serve controller busy); will retry" in caplog.text


@pytest.mark.parametrize("name", ["state.db", "registry.json"])
def test_a_corrupt_state_file_does_not_stop_the_manager(
    manager: ModelManager, serve: FakeServe, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    broken = manager.state_dir / name  # the database, or a file of an earlier version to migrate
    garbage = '{"models": {"m": {"default_ver'
    broken.write_text(garbage)
    Path(f"{broken}-wal").unlink(missing_ok=True)
    with caplog.at_level("ERROR", logger="ray.serve"):
        fresh = ModelManager(manager.settings, serve)
    assert "cannot be read" in caplog.text
    (aside,) = manager.state_dir.glob(f"{name}.bad-*")
    assert aside.read_text() == garbage  # kept for the operator
    serve.apps.clear()
    if name == "state.db":  # what it held is lost (and kept aside for the operator)
        assert run(fresh.restore()) == [] and run(fresh.list_models()) == []
    else:  # what the database held is still there
        assert run(fresh.restore()) == ["m/1.0"]
    register(fresh, make_archive(fresh.model_store, "n", "1.0"))  # registering works again


def test_what_an_unfinished_registration_left_is_removed_at_start(
    manager: ModelManager, serve: FakeServe, caplog: pytest.LogCaptureFixture
) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    scratch = manager.models_dir / ".incoming" / "123"  # killed while unpacking...
    scratch.mkdir(parents=True)
    partial = manager.downloads_dir / ".download-abc.part"  # ...or while downloading
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half")
    with caplog.at_level("WARNING", logger="ray.serve"):
        ModelManager(manager.settings, serve)
    assert not scratch.exists() and not partial.exists()
    assert "Removed what 2 unfinished registrations left behind" in caplog.text
    assert (manager.models_dir / "m" / "1.0" / "tiny.pth").is_file()  # registered files stay
