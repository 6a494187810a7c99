"""``inference_auth: true``: without the token nothing names a model or says why it fails.

Kubernetes probes (no token) still get the status code of /ping and the readiness route;
a caller with the token gets the detail."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from deployments.common.settings import IngressArgs
from handlers.handler_catalog import create_handler
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import tiny_spec

TOKEN = "inference-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REASON = "ModelLoadError: Weights or model file not found: /srv/secret/models/w.pth"


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    handler = create_handler(tiny_spec())
    handler.load()
    return LocalRouter({"tiny": handler, "broken": handler})


@pytest.fixture
def client(router: LocalRouter) -> TestClient:
    router.down = {"broken": REASON}
    return TestClient(inference_app(router, IngressArgs(inference_auth=True, access_log="off"), token=TOKEN))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/tiny"),
        ("GET", "/metrics"),
        ("POST", "/predictions/tiny"),
        ("POST", "/v1/models/tiny:predict"),
        ("POST", "/v2/models/tiny/infer"),
    ],
)
def test_model_routes_need_the_token(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, content=b"{}")
    assert response.status_code == 401, response.text
    assert "tiny" not in response.text


def test_health_says_unhealthy_without_naming_models_or_paths(client: TestClient) -> None:
    for path, status in (("/ping", 500), ("/v2/health/ready", 503)):
        anonymous = client.get(path)
        assert anonymous.status_code == status
        assert "broken" not in anonymous.text and "/srv/secret" not in anonymous.text
        detailed = client.get(path, headers=AUTH)
        assert detailed.status_code == status and detailed.json()["models"]["broken/1.0"].endswith(REASON)
    assert client.get("/v2/health/live").status_code == 200


def test_the_token_opens_metadata_and_metrics(client: TestClient) -> None:
    assert client.get("/v2/models/tiny", headers=AUTH).json()["versions"] == ["1.0"]
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_without_inference_auth_health_keeps_its_detail(router: LocalRouter) -> None:
    router.down = {"broken": REASON}
    client = TestClient(inference_app(router, IngressArgs(access_log="off")))
    assert client.get("/ping").json()["models"]["broken/1.0"].endswith(REASON)
    assert client.get("/metrics").status_code == 200
