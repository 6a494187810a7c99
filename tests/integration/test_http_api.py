"""The inference API in-process: routes, request parsing, error shapes (no Ray)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from deployments.common.settings import IngressArgs
from handlers.handler_catalog import create_handler
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import tiny_spec

LIMIT = 2_000_000


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    handler = create_handler(tiny_spec())
    handler.load()
    return LocalRouter({"tiny": handler})


@pytest.fixture
def client(router: LocalRouter, tmp_path, monkeypatch) -> TestClient:
    router.down.clear()
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    settings = IngressArgs(max_body_bytes=LIMIT, access_log="json")
    return TestClient(inference_app(router, settings))


def assert_error(response, status: int, type_name: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status and body["type"] == type_name
    assert fragment.lower() in body["message"].lower()
    assert "Traceback (most recent call last)" not in response.text


def test_raw_body_post_and_put(client: TestClient, cat_png: bytes) -> None:
    for method in ("POST", "PUT"):  # curl -T sends PUT, as in TorchServe's examples
        response = client.request(method, "/predictions/tiny", content=cat_png)
        assert response.status_code == 200
        assert len(response.json()) == 3
        assert response.headers["x-request-id"]
        assert response.headers["x-batch-size"] == "1"
        assert response.headers["x-model-version"] == "1.0"


def test_version_route(client: TestClient, cat_png: bytes) -> None:
    assert client.post("/predictions/tiny/1.0", content=cat_png).status_code == 200
    assert_error(
        client.post("/predictions/tiny/9.9", content=cat_png),
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: tiny",
    )


def test_multipart_data_field(client: TestClient, cat_png: bytes, coffee_png: bytes) -> None:
    one = client.post("/predictions/tiny", files={"data": ("cat.png", cat_png, "image/png")})
    assert one.status_code == 200 and isinstance(one.json(), dict)
    two = client.post(
        "/predictions/tiny",
        files=[("data", ("a.png", cat_png, "image/png")), ("data", ("b.png", coffee_png, "image/png"))],
    )
    assert two.status_code == 200 and len(two.json()) == 2


def test_multipart_without_data_field(client: TestClient) -> None:
    response = client.post(
        "/predictions/tiny",
        content=b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--xyz--\r\n',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(response, 400, "BadRequestException", "no field named 'data'")


def test_malformed_multipart(client: TestClient) -> None:
    response = client.post(
        "/predictions/tiny",
        content=b'--xyz\r\nContent-Disposition: form-data; name="data"\r\n\r\nunterminated',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(response, 400, "BadRequestException", "multipart")


def test_not_an_image(client: TestClient) -> None:
    assert_error(
        client.post("/predictions/tiny", content=b"hello"), 400, "BadRequestException", "not an image"
    )


def test_empty_body(client: TestClient) -> None:
    assert_error(
        client.post("/predictions/tiny", content=b""), 400, "BadRequestException", "Empty request body"
    )


def test_json_to_an_image_model(client: TestClient) -> None:
    response = client.post("/predictions/tiny", json={"instances": [1]})
    assert_error(response, 415, "UnsupportedMediaTypeException", "application/json")


def test_body_over_the_limit(client: TestClient) -> None:
    response = client.post("/predictions/tiny", content=b"\0" * (LIMIT + 1))
    assert_error(response, 413, "PayloadTooLargeException", str(LIMIT))


def test_streamed_body_over_the_limit(client: TestClient) -> None:
    def chunks():
        for _ in range(5):
            yield b"\0" * (LIMIT // 2)

    assert_error(
        client.post("/predictions/tiny", content=chunks()), 413, "PayloadTooLargeException", str(LIMIT)
    )


def test_unknown_model_and_route(client: TestClient, cat_png: bytes) -> None:
    assert_error(client.post("/predictions/nosuch", content=cat_png), 404, "ModelNotFoundException", "nosuch")
    assert_error(
        client.get("/nosuch"),
        404,
        "ResourceNotFoundException",
        "Requested resource is not found, please refer to API document.",
    )


def test_not_ready_is_503_with_retry_after(client: TestClient, router: LocalRouter, cat_png: bytes) -> None:
    router.down["tiny"] = "ModelLoadError: weights missing"
    response = client.post("/predictions/tiny", content=cat_png)
    assert_error(response, 503, "ServiceUnavailableException", "weights missing")
    assert response.headers["retry-after"] == "5"


def test_deadline_is_504(client: TestClient, cat_png: bytes) -> None:
    assert_error(client.post("/predictions/slow", content=cat_png), 504, "RequestTimeoutException", "slow")


def test_ping_reflects_model_health(client: TestClient, router: LocalRouter) -> None:
    assert client.get("/ping").json() == {"status": "Healthy"}
    router.down["tiny"] = "ModelLoadError: weights missing"
    response = client.get("/ping")
    assert response.status_code == 500
    assert response.json()["models"] == {
        "tiny/1.0": 'Model "tiny" version 1.0 failed to start: ModelLoadError: weights missing'
    }


def test_api_description(client: TestClient) -> None:
    for response in (client.get("/api-description"), client.options("/")):
        paths = response.json()["paths"]
        assert "/predictions/{model_name}" in paths and "/ping" in paths


def test_metrics_count_requests_with_labels(client: TestClient, cat_png: bytes) -> None:
    for _ in range(3):
        client.post("/predictions/tiny", content=cat_png)
    client.post("/predictions/tiny", content=b"junk")
    client.post("/predictions/made-up-name", content=cat_png)
    text = client.get("/metrics").text
    assert 'ts_inference_requests_total{hostname="' in text
    labels = 'model_name="tiny",model_version="1.0",protocol="torchserve"'
    assert f'raytorch_requests_total{{code="200",{labels}}} 3.0' in text
    assert f'raytorch_requests_total{{code="400",{labels}}} 1.0' in text
    assert "made-up-name" not in text  # unknown names share one series
    assert 'raytorch_batch_size_count{model_name="tiny",model_version="1.0"} 3.0' in text
    assert 'raytorch_replicas_ready{model_name="tiny",model_version="1.0"} 1.0' in text


def test_metrics_name_filter(client: TestClient, cat_png: bytes) -> None:
    client.post("/predictions/tiny", content=cat_png)
    text = client.get("/metrics", params={"name[]": ["ts_inference_requests_total"]}).text
    assert "ts_inference_requests_total" in text
    assert "raytorch_" not in text and "ts_queue_latency" not in text


def test_access_log_lines_carry_the_request_id(client: TestClient, cat_png: bytes, tmp_path) -> None:
    response = client.post("/predictions/tiny", content=cat_png)
    missing = client.post("/predictions/nosuch", content=cat_png)
    client.app.telemetry.access.flush()
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    by_id = {line["request_id"]: line for line in lines}
    ok = by_id[response.headers["x-request-id"]]
    assert (ok["status"], ok["model"], ok["version"], ok["batch_size"]) == (200, "tiny", "1.0", "1")
    assert ok["method"] == "POST" and ok["path"] == "/predictions/tiny" and ok["latency_ms"] > 0
    assert by_id[missing.headers["x-request-id"]]["status"] == 404


def test_made_up_names_and_versions_cannot_grow_the_metrics(client: TestClient, cat_png: bytes) -> None:
    empty_multipart = {"content-type": "multipart/form-data; boundary=B"}

    def attack(i: int) -> None:
        assert client.post(f"/predictions/tiny/v{i}", content=cat_png).status_code == 404
        assert client.post(f"/predictions/made-up-{i}", content=cat_png).status_code == 404
        assert client.post(f"/predictions/made-up-{i}/{i}", content=cat_png).status_code == 404
        response = client.post(f"/predictions/made-up-{i}", content=b"--B--\r\n", headers=empty_multipart)
        assert response.status_code == 400
        assert client.post(f"/v2/models/tiny/versions/v{i}/infer", json={"inputs": []}).status_code == 400
        instances = {"instances": [{"b64": "aGk="}]}
        assert client.post(f"/v1/models/made-up-{i}:predict", json=instances).status_code == 404

    attack(0)
    before = client.get("/metrics").text.splitlines()
    for i in range(1, 200):
        attack(i)
    after = client.get("/metrics").text.splitlines()
    assert len(after) == len(before), "each made-up name or version added metric series"
    assert "made-up" not in "\n".join(after) and 'model_version="v1' not in "\n".join(after)


def test_a_chunked_multipart_body_gets_its_413_not_a_parse_error(router: LocalRouter) -> None:
    """The limit applies before any multipart parsing (the old code parsed first and answered
    400). That reading stops at the limit is tests/unit/test_request_body.py's: Starlette's test
    client hands the app the whole body at once."""
    client = TestClient(inference_app(router, IngressArgs(max_body_bytes=1 << 20, access_log="off")))

    def body():  # no Content-Length: 8 MiB in one multipart part
        yield b'--B\r\nContent-Disposition: form-data; name="data"; filename="a.png"\r\n\r\n'
        for _ in range(128):
            yield b"\0" * 65536

    headers = {"content-type": "multipart/form-data; boundary=B"}
    response = client.post("/predictions/tiny", content=body(), headers=headers)
    assert_error(response, 413, "PayloadTooLargeException", "1048576")
