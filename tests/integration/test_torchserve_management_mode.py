"""The /models API as `raytorch torchserve` runs it: TorchServe's management key from its key
file, enable_model_api, default_workers_per_model, and the startup models of load_models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deployments.common.torchserve_args import StartupModel, TorchServeManagement
from deployments.common.ts_keys import write_new_key_file
from deployments.management.register_params import RegisterParams
from deployments.management.torchserve_mode import (
    load_startup_models,
    management_authorizer,
    torchserve_management_app,
)
from deployments.management.workflow_api import create_workflow_app
from handlers.errors import ConflictError, ModelNotFoundError
from tests.integration.test_management_api import RecordingManager


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    content = write_new_key_file(tmp_path / "key_file.json")
    return {kind: content[kind]["key"] for kind in content} | {"path": str(tmp_path / "key_file.json")}


def _client(
    manager: RecordingManager, keys: dict[str, str] | None, model_api: bool, **defaults
) -> TestClient:
    settings = TorchServeManagement(key_file=keys["path"] if keys else None, model_api=model_api, **defaults)
    return TestClient(torchserve_management_app(manager, settings), root_path="/models")


def test_management_key_of_the_key_file(keys: dict[str, str]) -> None:
    client = _client(RecordingManager(), keys, model_api=True)
    assert client.get("/models", headers={"Authorization": f"Bearer {keys['management']}"}).status_code == 200
    for wrong in (keys["inference"], keys["API"]):
        refused = client.get("/models", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401 and refused.json()["type"] == "UnauthorizedException"


def test_no_key_asked_with_token_authorization_off() -> None:
    assert _client(RecordingManager(), None, model_api=True).get("/models").status_code == 200


def test_model_api_off_refuses_register_and_unregister_only(keys: dict[str, str]) -> None:
    manager = RecordingManager()
    client = _client(manager, keys, model_api=False)
    auth = {"Authorization": f"Bearer {keys['management']}"}
    for method, path in [
        ("POST", "/models?url=x.mar"),
        ("DELETE", "/models/m0"),
        ("DELETE", "/models/m0/1.0"),
    ]:
        refused = client.request(method, path, headers=auth)
        assert refused.status_code == 405, (method, path)
        assert "enable_model_api=true" in refused.json()["message"]
    assert client.get("/models/m0", headers=auth).status_code == 200
    assert client.put("/models/m0?min_worker=2", headers=auth).status_code == 202
    assert not any(call[0] in ("register", "unregister") for call in manager.calls)


def test_registration_defaults_fill_only_what_the_request_leaves_out(keys: dict[str, str]) -> None:
    manager = RecordingManager()
    client = _client(manager, keys, True, default_workers=2, default_response_timeout=30)
    auth = {"Authorization": f"Bearer {keys['management']}"}
    client.post("/models?url=a.mar", headers=auth)
    client.post("/models?url=b.mar&initial_workers=0", headers=auth)
    first, second = (call[1] for call in manager.calls)
    assert (first.initial_workers, first.response_timeout) == (2, 30)
    assert second.initial_workers == 0


class StartupManager:
    def __init__(self) -> None:
        self.registered: list[RegisterParams] = []

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        if params.url == "restored.mar":
            raise ConflictError("Model version 1.0 is already registered for model restored")
        if params.url == "missing.mar":
            raise ModelNotFoundError("Model not found at: missing.mar")
        self.registered.append(params)
        return 202, {"status": "Processing worker updates..."}


def test_startup_models_load_and_failures_are_named() -> None:
    manager = StartupManager()
    models = [
        StartupModel(url="a.mar", model_name="first", initial_workers=3, batch_size=4),
        StartupModel(url="restored.mar"),
        StartupModel(url="missing.mar"),
        StartupModel(url="b.mar"),
    ]
    failed = asyncio.run(load_startup_models(manager, models, default_workers=2))
    assert failed == ["missing.mar"]
    first, second = manager.registered
    assert (first.model_name, first.initial_workers, first.batch_size, first.synchronous) == (
        "first",
        3,
        4,
        False,
    )
    assert (second.url, second.initial_workers) == ("b.mar", 2)


def test_job_queue_size_bounds_each_registered_models_queue(tmp_path: Path) -> None:
    from deployments.management.register_params import app_args
    from handlers.archive import extract, read_extracted
    from tests.unit.test_archives import make_mar

    found = read_extracted(extract(make_mar(tmp_path / "tiny.mar"), tmp_path / "out"))
    params = RegisterParams(url="tiny.mar")
    assert app_args(found, params, max_queued_requests=10).resources.max_queued_requests == 10
    assert app_args(found, params).resources.max_queued_requests == -1  # our configs: unbounded


class NoWorkflows:
    """No workflow registered: what the /workflows routes list."""

    async def list(self, limit: int, start: int) -> dict:
        return {"workflows": []}


def test_workflows_take_the_management_key(keys: dict[str, str]) -> None:
    settings = TorchServeManagement(key_file=keys["path"], model_api=True)
    app = create_workflow_app(NoWorkflows(), management_authorizer(settings))  # type: ignore[arg-type]
    client = TestClient(app, root_path="/workflows")
    listed = client.get("/workflows", headers={"Authorization": f"Bearer {keys['management']}"})
    assert listed.status_code == 200 and listed.json() == {"workflows": []}
    for wrong in (keys["inference"], keys["API"], "made-up"):
        refused = client.get("/workflows", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401 and refused.json()["type"] == "UnauthorizedException"
