"""The /models API in-process: auth, parameter validation, pagination, TorchServe shapes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from deployments.management.api import create_management_app
from deployments.management.register_params import RegisterParams
from handlers.errors import ModelNotFoundError

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingManager:
    """Stands in for ModelManager: records calls, answers like it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.models = [{"modelName": f"m{i}", "modelUrl": f"m{i}.mar"} for i in range(5)]

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        self.calls.append(("register", params))
        return (200 if params.synchronous else 202), {"status": "ok"}

    async def scale(self, model: str, version: str | None, low: int, high: int, synchronous: bool):
        self.calls.append(("scale", model, version, low, high, synchronous))
        return 202, {"status": "Processing worker updates..."}

    async def set_default(self, model: str, version: str) -> dict[str, str]:
        self.calls.append(("set_default", model, version))
        return {"status": "ok"}

    async def unregister(self, model: str, version: str | None) -> dict[str, str]:
        if model == "nosuch":
            raise ModelNotFoundError("Model not found: nosuch")
        self.calls.append(("unregister", model, version))
        return {"status": f'Model "{model}" unregistered'}

    async def describe(self, model: str, version: str | None, customized: bool = False) -> list[dict]:
        self.calls.append(("describe", model, version, customized))
        return [{"modelName": model, "modelVersion": version}]

    async def list_models(self) -> list[dict[str, str]]:
        return self.models


@pytest.fixture
def manager() -> RecordingManager:
    return RecordingManager()


@pytest.fixture
def client(manager: RecordingManager) -> TestClient:
    return TestClient(create_management_app(manager, TOKEN), root_path="/models")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}])
def test_every_route_needs_the_token(client: TestClient, headers: dict) -> None:
    for method, path in [("GET", "/models"), ("POST", "/models?url=x.mar"), ("DELETE", "/models/m0")]:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["type"] == "UnauthorizedException"


def test_register_passes_typed_parameters(client: TestClient, manager: RecordingManager) -> None:
    response = client.post(
        "/models?url=resnet18.mar&batch_size=8&max_batch_delay=20&initial_workers=2&synchronous=false",
        headers=AUTH,
    )
    assert response.status_code == 202
    params = manager.calls[0][1]
    assert (params.url, params.batch_size, params.max_batch_delay, params.initial_workers) == (
        "resnet18.mar",
        8,
        20,
        2,
    )


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("", "url"),
        ("?url=x.mar&batch_size=-1", "batch_size"),
        ("?url=x.mar&initial_workers=abc", "initial_workers"),
        ("?url=x.mar&model_name=../etc", "model_name"),
    ],
)
def test_bad_register_parameters_are_named(client: TestClient, query: str, named: str) -> None:
    response = client.post(f"/models{query}", headers=AUTH)
    assert response.status_code == 400
    assert named in response.json()["message"]


def test_scale_parameters(client: TestClient, manager: RecordingManager) -> None:
    assert client.put("/models/m0?min_worker=2&max_worker=4", headers=AUTH).status_code == 202
    assert manager.calls[-1] == ("scale", "m0", None, 2, 4, False)
    bad = client.put("/models/m0?min_worker=abc", headers=AUTH)
    assert bad.status_code == 400 and "min_worker" in bad.json()["message"]
    inverted = client.put("/models/m0/1.0?min_worker=3&max_worker=1", headers=AUTH)
    assert inverted.status_code == 400
    assert inverted.json()["message"] == "max_worker cannot be less than min_worker."  # TorchServe's


def test_pagination(client: TestClient) -> None:
    first = client.get("/models?limit=2", headers=AUTH).json()
    assert [m["modelName"] for m in first["models"]] == ["m0", "m1"] and first["nextPageToken"] == "2"
    last = client.get("/models?limit=2&next_page_token=4", headers=AUTH).json()
    assert [m["modelName"] for m in last["models"]] == ["m4"] and "nextPageToken" not in last


def test_describe_set_default_and_unregister(client: TestClient, manager: RecordingManager) -> None:
    assert client.get("/models/m0/all", headers=AUTH).json() == [{"modelName": "m0", "modelVersion": "all"}]
    assert client.put("/models/m0/2.0/set-default", headers=AUTH).status_code == 200
    assert client.delete("/models/m0/2.0", headers=AUTH).json() == {"status": 'Model "m0" unregistered'}
    missing = client.delete("/models/nosuch", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"
    assert client.get("/models/m0/-bad", headers=AUTH).status_code == 400
    assert ("set_default", "m0", "2.0") in manager.calls
