"""KServe v1 and Open Inference Protocol v2 routes in-process, plus name checks on every route."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from deployments.common.settings import IngressArgs
from handlers.registry import create_handler
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import tiny_spec
from tests.integration.test_http_api import assert_error

LIMIT = 2_000_000


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    handler = create_handler(tiny_spec())
    handler.load()
    return LocalRouter({"tiny": handler})


@pytest.fixture
def client(router: LocalRouter) -> TestClient:
    router.down.clear()
    return TestClient(inference_app(router, IngressArgs(max_body_bytes=LIMIT)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_v1_predict_with_data_and_b64_instances(
    client: TestClient, cat_png: bytes, coffee_png: bytes
) -> None:
    response = client.post(
        "/v1/models/tiny:predict", json={"instances": [{"data": b64(cat_png)}, {"b64": b64(coffee_png)}]}
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and all(len(p) == 3 for p in predictions)
    # The same image gives the same answer as the TorchServe route.
    assert predictions[0] == client.post("/predictions/tiny", content=cat_png).json()
    assert client.post(
        "/v1/models/tiny/versions/1.0:predict", json={"instances": [{"b64": b64(cat_png)}]}
    ).json()


def test_v2_infer_bytes_inputs(client: TestClient, cat_png: bytes) -> None:
    request = {
        "id": "req-1",
        "inputs": [{"name": "data", "shape": [2], "datatype": "BYTES", "data": [b64(cat_png), b64(cat_png)]}],
    }
    response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1.0" and body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2] and len(output["data"]) == 2
    assert client.post("/v2/models/tiny/versions/1.0/infer", json=request).status_code == 200


def test_v2_health_and_metadata(client: TestClient, router: LocalRouter) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = client.get("/v2/models/tiny").json()
    assert metadata["name"] == "tiny" and metadata["versions"] == ["1.0"]
    assert_error(client.get("/v2/models/nosuch"), 404, "ModelNotFoundException", "nosuch")
    router.down["tiny"] = "loading"
    not_ready = client.get("/v2/health/ready")
    assert not_ready.status_code == 503 and not_ready.json()["ready"] is False


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("/v1/models/tiny:predict", b"{not json", "Invalid JSON body"),
        ("/v2/models/tiny/infer", b'{"inputs": [', "Invalid JSON body"),
        ("/v1/models/tiny:predict", b"\xff\xfe\x00", "not UTF-8"),
        ("/v1/models/tiny:predict", b"[1, 2]", "must be an object"),
        ("/v1/models/tiny:predict", b"{}", "'instances' must be a list"),
        ("/v1/models/tiny:predict", b'{"instances": []}', "holds no input"),
        (
            "/v1/models/tiny:predict",
            b'{"instances": [{"data": "%%%"}]}',
            "instances[0].data is not valid base64",
        ),
        ("/v1/models/tiny:predict", b'{"instances": [{"b64": 7}]}', "must be a base64 string"),
        ("/v1/models/tiny:predict", b'{"instances": [42]}', "instances[0] must be"),
        ("/v1/models/tiny:predict", b'{"instances": [{"b64": "aGVsbG8="}]}', "instances[0]: Request body"),
        ("/v2/models/tiny/infer", b'{"inputs": []}', "non-empty list"),
        ("/v2/models/tiny/infer", b'{"inputs": [{"datatype": "FP32", "data": [1.0]}]}', "BYTES inputs"),
        ("/v2/models/tiny/infer", b'{"inputs": [{"datatype": "BYTES", "data": "x"}]}', "must be a list"),
        (
            "/v2/models/tiny/infer",
            b'{"inputs": [{"datatype": "BYTES", "shape": [3], "data": ["aGk="]}]}',
            "does not match",
        ),
    ],
)
def test_bad_v1_v2_requests_are_400_naming_the_problem(
    client: TestClient, route: str, body: bytes, fragment: str
) -> None:
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "BadRequestException", fragment)


def test_v1_limits(client: TestClient) -> None:
    too_many = {"instances": [{"b64": "aGk="}] * 65}
    assert_error(
        client.post("/v1/models/tiny:predict", json=too_many), 400, "BadRequestException", "at most 64"
    )
    huge = b'{"instances": ["' + b"a" * LIMIT + b'"]}'
    assert_error(
        client.post("/v1/models/tiny:predict", content=huge), 413, "PayloadTooLargeException", "limit"
    )
    assert_error(
        client.post("/v1/models/nosuch:predict", json={"instances": [{"b64": "aGk="}]}),
        404,
        "ModelNotFoundException",
        "nosuch",
    )


@pytest.mark.parametrize(
    "path",
    [
        "/predictions/..%2F..%2Fetc%2Fpasswd",
        "/predictions/.hidden",
        "/predictions/" + "m" * 5000,
        "/predictions/mod%C3%A8le",
        "/predictions/tiny/1.0%20OR%201",
        "/v1/models/mod%C3%A8le:predict",
        "/v2/models/" + "m" * 300 + "/infer",
    ],
)
def test_impossible_model_names_are_400_and_not_echoed_whole(client: TestClient, path: str) -> None:
    response = client.post(path, content=b"x", headers={"content-type": "application/json"})
    if response.status_code == 404:  # an encoded '/' splits the path: no route at all
        assert response.json()["type"] == "ResourceNotFoundException"
        return
    assert_error(response, 400, "BadRequestException", "model")
    assert len(response.json()["message"]) < 300


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v2/models/tiny/infer"])
def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient, path: str) -> None:
    deep = b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = client.post(path, content=deep)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["message"]
