"""Pooled registrations and traffic control through the ModelManager, over a fake Serve and fake
pool replicas: no Serve application per pooled model, the same API as dedicated models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from deployments.common.management_args import ManagementArgs
from deployments.common.model_table import PoolState
from deployments.management.describe import DeploymentFacts, ReplicaFacts
from deployments.management.manager import ModelManager
from deployments.management.register_params import RegisterParams
from deployments.management.serve_control import ServeSnapshot
from handlers.errors import (
    BadInputError,
    ConfigError,
    ConflictError,
    DefaultVersionError,
    ModelLoadError,
    ModelNotFoundError,
    ModelVersionNotFoundError,
)
from tests.fixtures.management import FakeServe, make_archive


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class PoolServe(FakeServe):
    """FakeServe plus a running pool named "small" (two replicas, r1 and r2)."""

    async def snapshot(self) -> ServeSnapshot:
        snapshot = await super().snapshot()
        snapshot.table.pools["small"] = PoolState("small", "pool-small", "pool:small", "RUNNING", 2)
        return snapshot

    async def deployment_facts(self, app_name: str, deployment_name: str) -> DeploymentFacts | None:
        if app_name != "pool-small":
            return await super().deployment_facts(app_name, deployment_name)
        replicas = [ReplicaFacts(r, "RUNNING", None, 1.7e9) for r in ("r1", "r2")]
        return DeploymentFacts(replicas, 16, {"max_batch_size": 8, "batch_wait_timeout_s": 0.0}, 0, 5)


class FakePoolCalls:
    """Pool replicas: loads always work unless a model id is marked broken."""

    def __init__(self) -> None:
        self.validated: list[tuple[str, dict]] = []
        self.unloaded: list[str] = []
        self.broken = False
        self.loaded: list[str] = []

    async def validate(self, pool: PoolState, model_id: str, spec: dict, timeout_s: float) -> dict:
        self.validated.append((model_id, spec))
        if self.broken:
            raise ModelLoadError("state_dict does not match the model")
        return {"load_seconds": 0.01, "size_mb": 0.1}

    async def unload(self, pool: PoolState, model_id: str) -> int:
        self.unloaded.append(model_id)
        return 1

    async def reports(self, pool: PoolState) -> list[dict[str, Any]]:
        return [{"replica": "r1", "models": self.loaded}, {"replica": "r2", "models": []}]


@pytest.fixture
def serve() -> PoolServe:
    return PoolServe()


@pytest.fixture
def calls() -> FakePoolCalls:
    return FakePoolCalls()


def make_manager(tmp_path: Path, serve: FakeServe, calls: FakePoolCalls, **settings: Any) -> ModelManager:
    args = ManagementArgs(
        state_dir=str(tmp_path / "state"),
        model_store=str(tmp_path / "store"),
        propagation_s=0,
        trusted_modules=["tests.fixtures"],
        **settings,
    )
    return ModelManager(args, serve, calls)


@pytest.fixture
def manager(
    tmp_path: Path, serve: PoolServe, calls: FakePoolCalls, monkeypatch: pytest.MonkeyPatch
) -> ModelManager:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    return make_manager(tmp_path, serve, calls)


def register(manager: ModelManager, name: str, version: str, **params: Any) -> tuple[int, dict]:
    return run(
        manager.register(RegisterParams(url=make_archive(manager.model_store, name, version), **params))
    )


def test_a_pooled_registration_creates_no_application(
    manager: ModelManager, serve: PoolServe, calls: FakePoolCalls
) -> None:
    status, body = register(manager, "m", "1.0", pool="small")
    assert (status, body) == (200, {"status": 'Model "m" Version: 1.0 registered in pool small'})
    assert serve.deployed == []  # no Serve application: a journal line and the files
    model_id, spec = calls.validated[0]  # one replica loaded it once before the 200
    assert model_id.startswith("m@1.0#") and Path(spec["base_dir"]) == manager.models_dir / "m" / "1.0"
    assert (manager.models_dir / "m" / "1.0" / "tiny.pth").is_file()
    update = manager.routing.update(-1, "")
    assert update.models["m"].pooled["1.0"].model_id == model_id and update.models["m"].default == "1.0"
    assert manager.pools.spec(model_id) == spec  # what a pool replica asks for on a cold load
    restarted = make_manager(manager.state_dir.parent, serve, calls)
    assert restarted.routing.state().models["m"].pooled["1.0"].pool == "small"


def test_the_pool_must_run_and_choices_must_agree(
    tmp_path: Path, manager: ModelManager, serve: PoolServe, calls: FakePoolCalls
) -> None:
    with pytest.raises(
        BadInputError, match=r"No model pool named 'nosuch' runs on this server \(pools: small\)"
    ):
        register(manager, "m", "1.0", pool="nosuch")
    with pytest.raises(BadInputError, match="either pool= or dedicated=true"):
        register(manager, "m", "1.0", pool="small", dedicated=True)
    incoming = manager.models_dir / ".incoming"  # the pool is checked before any unpacking
    assert not (incoming.exists() and list(incoming.iterdir())) and manager.store.registered() == []
    with_default = make_manager(tmp_path / "second", serve, calls, default_pool="small")
    assert register(with_default, "p", "1.0")[0] == 200 and serve.deployed == []
    assert register(with_default, "d", "1.0", dedicated=True)[0] == 200 and serve.deployed == ["d@1.0"]


def test_a_version_is_either_pooled_or_dedicated(manager: ModelManager) -> None:
    register(manager, "m", "1.0", pool="small")
    with pytest.raises(ConflictError, match=r"Model version 1\.0 is already registered for model m"):
        register(manager, "m", "1.0")
    register(manager, "d", "1.0")
    with pytest.raises(ConflictError):
        register(manager, "d", "1.0", pool="small")
    with pytest.raises(BadInputError, match="'traffic' is reserved"):
        register(manager, "m", "traffic", pool="small")


def test_a_model_that_does_not_load_is_refused_and_forgotten(
    manager: ModelManager, calls: FakePoolCalls
) -> None:
    calls.broken = True
    with pytest.raises(ModelLoadError, match="does not match"):
        register(manager, "m", "1.0", pool="small")
    assert manager.store.registered() == [] and not (manager.models_dir / "m" / "1.0").exists()


def test_an_asynchronous_registration_that_does_not_load_shows_in_describe(
    manager: ModelManager, calls: FakePoolCalls
) -> None:
    calls.broken = True

    async def scenario() -> list[dict]:
        params = RegisterParams(
            url=make_archive(manager.model_store, "m", "1.0"), pool="small", synchronous=False
        )
        assert (await manager.register(params))[0] == 202
        for _ in range(100):
            if manager.pools.failed:
                break
            await asyncio.sleep(0.01)
        return await manager.describe("m", None)

    described = run(scenario())[0]
    assert described["status"] == "LOAD_FAILED" and "does not match" in described["message"]


def test_describe_list_and_scale_of_a_pooled_model(manager: ModelManager, calls: FakePoolCalls) -> None:
    register(manager, "m", "1.0", pool="small")
    calls.loaded = [calls.validated[0][0]]
    described = run(manager.describe("m", None))[0]
    assert described["pool"] == "small" and described["status"] == "RUNNING" and described["isDefault"]
    assert described["loadedOn"] == ["r1"] and [w["loaded"] for w in described["workers"]] == [True, False]
    assert described["trafficPercent"] == 100.0
    # TorchServe's fields, from the pool: its queue, workers and batching, and the settings
    # the registration left to the server (the pool's, beside TorchServe's defaults).
    assert described["jobQueueStatus"] == {"remainingCapacity": 16 * 2 - 5, "pendingRequests": 5}
    assert [w["id"] for w in described["workers"]] == ["r1", "r2"]
    assert (described["runtime"], described["batchSize"], described["responseTimeout"]) == ("python", 8, 120)
    assert described["raytorchDefaults"] == {
        "minWorkers": {"value": 2, "torchserve": 0},
        "batchSize": {"value": 8, "torchserve": 1},
        "maxBatchDelay": {"value": 0, "torchserve": 100},
    }
    customized = run(manager.describe("m", "1.0", customized=True))[0]["customizedMetadata"]
    assert customized["app"] == "pool-small" and customized["modelId"] == calls.validated[0][0]
    assert run(manager.list_models()) == [{"modelName": "m", "modelUrl": "m-1.0.zip"}]
    with pytest.raises(BadInputError, match="scale the pool in the server's config"):
        run(manager.scale("m", None, 2, 2, synchronous=True))


def test_unregistering_a_pooled_version_unloads_it_everywhere(
    manager: ModelManager, calls: FakePoolCalls
) -> None:
    register(manager, "m", "1.0", pool="small")
    model_id = calls.validated[0][0]
    since = manager.routing.feed.version
    assert run(manager.unregister("m", "1.0")) == {"status": 'Model "m" unregistered'}
    assert calls.unloaded == [model_id] and manager.pools.spec(model_id) is None
    assert not (manager.models_dir / "m" / "1.0").exists()
    update = manager.routing.update(since, manager.routing.feed.epoch)
    assert update.models == {"m": None} and not update.full and not update.serve
    with pytest.raises(ModelNotFoundError):
        run(manager.describe("m", None))


def test_set_default_and_a_canary_split_between_pooled_versions(manager: ModelManager) -> None:
    register(manager, "m", "1.0", pool="small")
    register(manager, "m", "2.0", pool="small")
    summary = run(manager.traffic.set("m", "1.0:90,2.0:10", None, 100))
    assert summary == {
        "modelName": "m",
        "defaultVersion": "1.0",
        "split": {"1.0": 90.0, "2.0": 10.0},
        "shadow": None,
    }
    assert [d["trafficPercent"] for d in run(manager.describe("m", "all"))] == [90.0, 10.0]
    assert manager.routing.state().models["m"].traffic.percents() == {"1.0": 90.0, "2.0": 10.0}
    # Promoting the canary ends the split; the choice survives a restart.
    run(manager.set_default("m", "2.0"))
    assert run(manager.traffic.get("m"))["split"] == {"2.0": 100.0}
    restarted = make_manager(manager.state_dir.parent, serve, calls).store
    assert (restarted.default("m"), restarted.policy("m")) == ("2.0", None)
    # As TorchServe, the default goes last (403); so does a version a split sends requests to.
    with pytest.raises(DefaultVersionError, match=r"^Cannot remove default version for model m$"):
        run(manager.unregister("m", "2.0"))
    run(manager.traffic.set("m", "2.0:90,1.0:10", None, 100))
    with pytest.raises(DefaultVersionError, match=r"split sends it 10% of the requests"):
        run(manager.unregister("m", "1.0"))
    run(manager.traffic.set("m", "2.0:1", "1.0", 50))  # 1.0 is only shadowed now: it may go
    run(manager.unregister("m", "1.0"))
    assert manager.routing.state().models["m"].traffic is None  # nothing left to control
    run(manager.unregister("m", None))  # the last version, the default
    assert "m" not in manager.routing.state().models and manager.store.defaults() == {}


def test_traffic_requests_are_checked(manager: ModelManager, serve: PoolServe) -> None:
    serve.add_config_model("cfg", "1.0")
    register(manager, "cfg", "2.0", pool="small")  # a pooled version beside the config's own
    with pytest.raises(
        ModelVersionNotFoundError, match=r"^Model version: 9\.0 does not exist for model: cfg$"
    ):
        run(manager.traffic.set("cfg", "1.0:1,9.0:1", None, 100))
    with pytest.raises(BadInputError, match="not version:weight"):
        run(manager.traffic.set("cfg", "1.0=90", None, 100))
    with pytest.raises(BadInputError, match="at least one weight"):
        run(manager.traffic.set("cfg", "1.0:0,2.0:0", None, 100))
    with pytest.raises(BadInputError, match="cannot be the shadow"):
        run(manager.traffic.set("cfg", "1.0:1,2.0:1", "2.0", 100))
    with pytest.raises(ModelNotFoundError, match="Model not found: nosuch"):
        run(manager.traffic.get("nosuch"))
    shadowed = run(manager.traffic.set("cfg", None, "2.0", 20))
    assert shadowed["shadow"] == {"version": "2.0", "percent": 20.0} and shadowed["split"] == {"2.0": 100.0}
    assert [d["shadowPercent"] for d in run(manager.describe("cfg", "all"))] == [0.0, 20.0]
    run(manager.set_default("cfg", "1.0"))  # a config model's default can be chosen too
    assert run(manager.traffic.get("cfg"))["defaultVersion"] == "1.0"
    assert run(manager.traffic.clear("cfg"))["shadow"] is None


def test_pooled_registrations_are_parsed_and_checked_as_dedicated_ones(
    manager: ModelManager, serve: PoolServe, calls: FakePoolCalls
) -> None:
    url = make_archive(manager.model_store, "m", "1.0")
    # TorchServe's shapes: parameters may come as a JSON body too.
    params = RegisterParams.parse({"url": url}, {"pool": "small", "runtime": "python3"})
    assert run(manager.register(params))[0] == 200 and serve.deployed == []
    assert run(manager.describe("m", None))[0]["runtime"] == "python3"
    with pytest.raises(ModelNotFoundError, match='Model not found at: ""'):
        run(manager.register(RegisterParams(url="", pool="small")))
    # issue 16's code policy: a factory outside the trusted modules is refused before any load.
    bad = make_archive(manager.model_store, "x", "1.0", extra={"source": {"factory": "os:system"}})
    with pytest.raises(ConfigError, match="'os:system' is not allowed for a registered model"):
        run(manager.register(RegisterParams(url=bad, pool="small")))
    assert [model_id for model_id, _ in calls.validated if model_id.startswith("x@")] == []
    # set-default of a pooled model speaks TorchServe's words.
    with pytest.raises(ModelVersionNotFoundError, match=r"^Model version 9\.9 does not exist for model m$"):
        run(manager.set_default("m", "9.9"))
    assert run(manager.set_default("m", "1.0")) == {
        "status": 'Default version successfully updated for model "m" to "1.0"'
    }


def test_a_pooled_archive_whose_code_is_no_longer_allowed_is_not_served_after_a_restart(
    tmp_path: Path,
    manager: ModelManager,
    serve: PoolServe,
    calls: FakePoolCalls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import zipfile

    url = make_archive(
        manager.model_store,
        "coded",
        "1.0",
        extra={"source": {"factory": "net.py:build", "state_dict": "tiny.pth"}},
    )
    with zipfile.ZipFile(manager.model_store / url, "a") as archive:
        archive.writestr("net.py", "from tests.fixtures.models import tiny_classifier as build\n")
    assert register(manager, "m", "1.0", pool="small")[0] == 200  # trusted code only
    assert run(manager.register(RegisterParams(url=url, pool="small")))[0] == 200
    coded_id = manager.store.pooled("coded")["1.0"].model_id
    plain_id = manager.store.pooled("m")["1.0"].model_id

    # The operator turns archive code off and restarts the server.
    restarted = make_manager(tmp_path, serve, calls, allow_archive_code=False)
    with caplog.at_level("ERROR", logger="ray.serve"):
        run(restarted.restore())
    assert "model coded version 1.0 cannot be restored" in caplog.text
    with pytest.raises(
        ConfigError, match=r"'net.py:build' is Python code from the archive.*allow_archive_code: false"
    ):
        restarted.pools.spec(coded_id)  # what a pool replica asks before a cold load: refused
    assert restarted.pools.spec(plain_id) is not None  # models without archive code still load
    described = run(restarted.describe("coded", None))[0]
    assert described["status"] == "LOAD_FAILED" and "allow_archive_code: false" in described["message"]
