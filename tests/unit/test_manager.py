"""ModelManager over a fake Serve: the management rules without a cluster.

The fake keeps applications in a dict and makes a deployed version ready (or failed) at
once; the manager, registry, archive handling and routing feed are the real ones.
"""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from deployments.common.model_table import ModelTable, ModelVersionState
from deployments.common.naming import model_deployment_name
from deployments.common.routing import RoutingUpdate
from deployments.common.settings import ManagementArgs, ModelAppArgs
from deployments.management.manager import ModelManager
from deployments.management.register_params import RegisterParams
from deployments.management.serve_control import ServeSnapshot
from handlers.errors import (
    BadInputError,
    ConflictError,
    InsufficientResourcesError,
    ModelLoadError,
    ModelNotFoundError,
)
from tests.fixtures.models import tiny_classifier


class FakeServe:
    """Serve's applications as a dict; deployed versions are RUNNING at once unless told."""

    def __init__(self) -> None:
        self.apps: dict[str, ModelVersionState] = {}
        self.free = {"CPU": 2.0}
        self.fail: set[str] = set()
        self.deployed: list[str] = []
        self.deleted: list[str] = []

    def add_config_model(self, model: str, version: str) -> None:
        self.apps[model] = ModelVersionState(
            model, version, model, model_deployment_name(model, version), "RUNNING", 1
        )

    async def snapshot(self) -> ServeSnapshot:
        table = ModelTable()
        for state in self.apps.values():
            table.versions.setdefault(state.model, {})[state.version] = state
        return ServeSnapshot({name: s.app_status for name, s in self.apps.items()}, table)

    async def deploy(self, app_name: str, args: ModelAppArgs) -> None:
        spec = args.model
        failed = app_name in self.fail
        self.apps[app_name] = ModelVersionState(
            spec.name, spec.version, app_name, model_deployment_name(spec.name, spec.version),
            "DEPLOY_FAILED" if failed else "RUNNING", 0 if failed else args.resources.num_replicas,
            "ModelLoadError: weights missing" if failed else "",
        )  # fmt: skip
        self.deployed.append(app_name)

    async def delete(self, app_name: str) -> None:
        self.apps.pop(app_name, None)
        self.deleted.append(app_name)

    async def resources(self) -> tuple[dict[str, float], float]:
        return dict(self.free), 0.0

    async def wait_until(self, done: Any, timeout_s: float, what: str, poll_s: float = 0.0) -> None:
        assert done((await self.snapshot()).table), what


def make_archive(store: Path, name: str, version: str) -> str:
    """One of our archives holding the tiny classifier; returns its url (file name)."""
    store.mkdir(parents=True, exist_ok=True)
    weights = store / "tiny.pth"
    torch.save(tiny_classifier().state_dict(), weights)
    spec = {
        "name": name,
        "version": version,
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "tiny.pth"},
        "warmup": False,
    }
    path = store / f"{name}-{version}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("raytorch-model.yaml", yaml.safe_dump({"model": spec}))
        archive.write(weights, "tiny.pth")
    return path.name


@pytest.fixture
def serve() -> FakeServe:
    return FakeServe()


@pytest.fixture
def manager(serve: FakeServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelManager:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    settings = ManagementArgs(
        state_dir=str(tmp_path / "state"), model_store=str(tmp_path / "store"), propagation_s=0
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
    assert ModelManager(manager.settings, serve).registry.defaults() == {"m": "1.0"}  # survives a restart


def test_a_second_registration_of_a_version_is_409(manager: ModelManager, serve: FakeServe) -> None:
    url = make_archive(manager.model_store, "m", "1.0")
    register(manager, url)
    with pytest.raises(ConflictError, match=r"Model version 1\.0 is already registered for model m"):
        register(manager, url)
    serve.add_config_model("cfg", "1.0")  # a model from the config file counts too
    with pytest.raises(ConflictError):
        register(manager, make_archive(manager.model_store, "cfg", "1.0"))
    assert list((manager.models_dir / ".incoming").iterdir()) == []  # losers leave no files


def test_too_few_cpus_is_refused_before_deploying(manager: ModelManager, serve: FakeServe) -> None:
    serve.free = {"CPU": 0.2}
    with pytest.raises(InsufficientResourcesError, match=r"CPU 0\.5 needed, 0\.2 free"):
        register(manager, make_archive(manager.model_store, "m", "1.0"))
    assert serve.deployed == [] and manager.registry.defaults() == {}


def test_a_model_that_fails_to_load_is_removed_with_the_reason(
    manager: ModelManager, serve: FakeServe
) -> None:
    serve.fail.add("m@1.0")
    with pytest.raises(ModelLoadError, match="weights missing"):
        register(manager, make_archive(manager.model_store, "m", "1.0"))
    assert serve.deleted == ["m@1.0"] and manager.registry.defaults() == {}


def test_default_version_rules(manager: ModelManager, serve: FakeServe) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    register(manager, make_archive(manager.model_store, "m", "2.0"))
    described = run(manager.describe("m", "all"))
    assert [(d["modelVersion"], d["isDefault"]) for d in described] == [("1.0", True), ("2.0", False)]
    run(manager.set_default("m", "2.0"))
    assert run(manager.describe("m", None))[0]["modelVersion"] == "2.0"
    run(manager.unregister("m", None))  # the default version goes
    assert serve.deleted == ["m@2.0"]
    assert manager.registry.defaults() == {"m": "1.0"}


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
    with pytest.raises(ModelNotFoundError, match=r"Model version not found: cfg version 9\.9"):
        run(manager.unregister("cfg", "9.9"))
    assert run(manager.list_models()) == [{"modelName": "cfg", "modelUrl": "config:cfg"}]


def test_restore_brings_back_what_is_missing(manager: ModelManager, serve: FakeServe) -> None:
    register(manager, make_archive(manager.model_store, "m", "1.0"))
    serve.apps.clear()  # the whole server restarted: Serve runs nothing of ours
    fresh = ModelManager(manager.settings, serve)
    assert run(fresh.restore()) == ["m/1.0"]
    assert "m@1.0" in serve.apps
