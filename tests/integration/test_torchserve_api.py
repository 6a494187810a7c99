"""TorchServe's own API tests, in-process: the cases of its Postman collections and of its
frontend's ModelServerTest that are about parsing, wording and routing.

The management API runs the real ModelManager over a fake Serve (no cluster), with archives
made by torch-model-archiver; the inference API serves real handlers (a TorchServe "noop"
handler file and the MNIST-shaped archive) through the ingress's entry point. Registration
flows on a real server are in tests/e2e/test_torchserve_suites.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deployments.common.management_args import ManagementArgs
from deployments.common.settings import IngressArgs
from deployments.management.api import create_management_app
from deployments.management.manager import ModelManager
from handlers.archive import extract, read_extracted
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.fixtures import torchserve_archives as ts
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.management import FakeServe

TOKEN = "ts-suite-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOT_FOUND = "Requested resource is not found, please refer to API document."
NOT_ALLOWED = "Requested method is not allowed, please refer to API document."


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TorchServe's test archives: noop (1.11), noop_v2 (1.2.1), a customized noop, squeezenet."""
    store = tmp_path_factory.mktemp("store")
    work = tmp_path_factory.mktemp("work")
    ts.build_handler_only(store, work / "noop", "noop", "1.11", ts.NOOP_CLASS, "service.py")
    ts.build_handler_only(store, work / "noop2", "noop_v2", "1.2.1", ts.NOOP_CLASS, "service.py")
    ts.build_handler_only(store, work / "c", "noop-customized", "1.0", ts.NOOP_CUSTOMIZED, "custom.py")
    ts.build_image_classifier(store, work / "sq", "squeezenet1_1")
    return store


@pytest.fixture
def serve() -> FakeServe:
    return FakeServe()


@pytest.fixture
def mgmt(store: Path, serve: FakeServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    settings = ManagementArgs(state_dir=str(tmp_path / "state"), model_store=str(store), propagation_s=0)
    return TestClient(create_management_app(ModelManager(settings, serve), TOKEN), root_path="/models")


def message(response) -> str:
    return response.json()["message"]


# -- management: registration parameters -------------------------------------------------------
def test_register_without_url(mgmt: TestClient) -> None:
    response = mgmt.post("/models", headers=AUTH)
    assert response.status_code == 400 and message(response) == "Parameter url is required."


def test_register_with_an_empty_url_is_not_found(mgmt: TestClient) -> None:
    assert mgmt.post("/models?url=&model_name=resnet-18", headers=AUTH).status_code == 404


@pytest.mark.parametrize("runtime", ["python4", "InvalidRuntime"])
def test_register_with_an_invalid_runtime(mgmt: TestClient, runtime: str) -> None:
    response = mgmt.post(f"/models?url=noop.mar&runtime={runtime}", headers=AUTH)
    assert response.status_code == 400 and message(response) == f"Invalid RuntimeType value: {runtime}"


def test_register_with_a_json_body(mgmt: TestClient) -> None:
    # ModelServerTest's body, single quotes and all (TorchServe's JSON parser accepts them).
    body = "{'url':'noop.mar', 'model_name':'noop', 'initial_workers':'1', 'synchronous':'true'}"
    response = mgmt.post("/models", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": 'Model "noop" Version: 1.11 registered with 1 initial workers'}
    clash = mgmt.post(
        "/models?url=noop.mar&model_name=other",
        json={"url": "noop.mar", "model_name": "noop2"},
        headers=AUTH,
    )
    assert clash.status_code == 400 and "model_name" in message(clash)


def test_register_conflict_and_zero_workers(mgmt: TestClient) -> None:
    first = mgmt.post(
        "/models?url=noop.mar&model_name=noop_v1.0&runtime=python&synchronous=false", headers=AUTH
    )
    assert first.status_code == 202
    again = mgmt.post(
        "/models?url=noop.mar&model_name=noop_v1.0&runtime=python&synchronous=false", headers=AUTH
    )
    assert again.status_code == 409
    assert message(again) == "Model version 1.11 is already registered for model noop_v1.0"
    idle = mgmt.post("/models?url=noop.mar&model_name=idle&initial_workers=0", headers=AUTH)
    assert idle.json()["status"] == (
        'Model "idle" Version: 1.11 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model."
    )


def test_torchserve_handler_names(mgmt: TestClient, serve: FakeServe) -> None:
    handler = "serve/ts/torch_handler/image_classifier.py:handle"
    ok = mgmt.post(f"/models?url=squeezenet1_1.mar&model_name=squeezenet1_1&handler={handler}", headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert serve.deployed_args["squeezenet1_1@1.0"].model.handler == "image_classifier"
    bad = mgmt.post("/models?url=squeezenet1_1.mar&model_name=mnist&handler=invalidHandler", headers=AUTH)
    assert bad.status_code == 400 and "invalidHandler" in message(bad)


# -- management: list, describe, scale, default, unregister -------------------------------------
def test_list_with_empty_negative_and_past_the_end_values(mgmt: TestClient) -> None:
    for name in ("a", "b", "c"):
        assert mgmt.post(f"/models?url=noop.mar&model_name={name}", headers=AUTH).status_code == 200
    assert len(mgmt.get("/models?limit=&next_page_token=", headers=AUTH).json()["models"]) == 3
    assert len(mgmt.get("/models?limit=-1", headers=AUTH).json()["models"]) == 3
    page = mgmt.get("/models?limit=1&next_page_token=-1", headers=AUTH).json()
    assert [m["modelName"] for m in page["models"]] == ["a"] and page["nextPageToken"] == "1"
    assert mgmt.get("/models?next_page_token=12", headers=AUTH).json() == {"models": []}


def test_versions_default_and_unregister(mgmt: TestClient) -> None:
    for url in ("noop.mar", "noop_v2.mar"):
        assert mgmt.post(f"/models?url={url}&model_name=noopversioned", headers=AUTH).status_code == 200
    assert mgmt.get("/models/noopversioned", headers=AUTH).json()[0]["modelVersion"] == "1.11"
    assert len(mgmt.get("/models/noopversioned/all", headers=AUTH).json()) == 2
    missing = mgmt.get("/models/noopversioned/1.3.1", headers=AUTH)
    assert missing.status_code == 404
    assert message(missing) == "Model version: 1.3.1 does not exist for model: noopversioned"
    default = mgmt.put("/models/noopversioned/1.2.1/set-default", headers=AUTH)
    assert default.json() == {
        "status": 'Default version successfully updated for model "noopversioned" to "1.2.1"'
    }
    bad_default = mgmt.put("/models/noopversioned/3.3.3/set-default", headers=AUTH)
    assert message(bad_default) == "Model version 3.3.3 does not exist for model noopversioned"
    refused = mgmt.delete("/models/noopversioned/1.2.1", headers=AUTH)
    assert refused.status_code == 403
    assert message(refused) == "Cannot remove default version for model noopversioned"
    assert mgmt.delete("/models/noopversioned/1.11", headers=AUTH).status_code == 200
    # The last version goes, with the query and trailing slash TorchServe's collection sends.
    gone = mgmt.delete("/models/noopversioned/?synchronous=true&timeout=true", headers=AUTH)
    assert gone.json() == {"status": 'Model "noopversioned" unregistered'}
    assert message(mgmt.delete("/models/invalid_squeezenet1_1", headers=AUTH)) == (
        "Model not found: invalid_squeezenet1_1"
    )


def test_scale_cases(mgmt: TestClient) -> None:
    assert mgmt.post("/models?url=noop.mar&model_name=resnet-18", headers=AUTH).status_code == 200
    assert mgmt.put("/models/resnet-18?min_worker=1&number_gpu=1", headers=AUTH).status_code == 202
    assert mgmt.put("/models/resnet-18", headers=AUTH).status_code == 202
    assert mgmt.put("/models/resnet-18?min_worker=0", headers=AUTH).status_code == 202
    synchronous = mgmt.put("/models/resnet-18/1.11?min_worker=1&synchronous=true", headers=AUTH)
    assert synchronous.json() == {"status": "Workers scaled to 1 for model: resnet-18, version: 1.11"}
    inverted = mgmt.put("/models/resnet-18?min_worker=2&max_worker=1", headers=AUTH)
    assert inverted.status_code == 400 and message(inverted) == "max_worker cannot be less than min_worker."
    assert mgmt.put("/models/resnet-18?max_worker=-1", headers=AUTH).status_code == 400
    wrong_version = mgmt.put("/models/resnet-18/0.0?min_worker=1&synchronous=true", headers=AUTH)
    assert wrong_version.status_code == 404
    assert message(mgmt.put("/models/fake", headers=AUTH)) == "Model not found: fake"


def test_describe_fields_and_customized_metadata(mgmt: TestClient, serve: FakeServe) -> None:
    assert mgmt.post("/models?url=noop-customized.mar", headers=AUTH).status_code == 200
    plain = mgmt.get("/models/noop-customized", headers=AUTH).json()[0]
    assert {"jobQueueStatus", "workers", "runtime", "batchSize", "maxBatchDelay"} <= set(plain)
    assert plain["jobQueueStatus"]["pendingRequests"] == serve.pending
    customized = mgmt.get("/models/noop-customized/1.0?customized=true", headers=AUTH).json()[0]
    assert customized["customizedMetadata"] == {"handler": "image_classifier", "app": "noop-customized@1.0"}
    assert message(mgmt.get("/models/InvalidModel", headers=AUTH)) == "Model not found: InvalidModel"


def test_model_management_api_description(mgmt: TestClient) -> None:
    assert mgmt.post("/models?url=noop.mar", headers=AUTH).status_code == 200
    document = mgmt.options("/models/noop", headers=AUTH).json()
    assert document["info"]["title"] == "RESTful Management API for: noop"
    assert {"/models/noop", "/models/noop/{model_version}"} <= set(document["paths"])
    assert set(document["paths"]["/models/noop"]) == {"get", "put", "delete"}
    assert mgmt.options("/models/nosuch", headers=AUTH).status_code == 404


def test_wrong_methods_and_paths(mgmt: TestClient) -> None:
    for method, path in (("PUT", "/models"), ("POST", "/models/noop")):
        response = mgmt.request(method, path, headers=AUTH)
        assert response.status_code == 405 and message(response) == NOT_ALLOWED, (method, path)


def test_mnist_with_its_handler_file_registers_unless_archive_code_is_off(
    store: Path, serve: FakeServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    ts.build_mnist(store, tmp_path / "work", "mnist_code")
    for allowed in (True, False):
        settings = ManagementArgs(
            state_dir=str(tmp_path / f"state-{allowed}"), model_store=str(store), propagation_s=0,
            allow_archive_code=allowed,
        )  # fmt: skip
        client = TestClient(create_management_app(ModelManager(settings, serve), TOKEN), root_path="/models")
        response = client.post("/models?url=mnist_code.mar&model_name=mnist", headers=AUTH)
        if allowed:  # the handler file is code inside the archive: it runs by default
            assert response.status_code == 200, response.text
            assert serve.deployed_args["mnist@1.0"].model.handler == "torchserve:mnist_handler.py"
        else:
            assert response.status_code == 400 and "allow_archive_code: false" in message(response)
    assert serve.deployed == ["mnist@1.0"]


# -- inference ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inference(store: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    handlers = {}
    for name, archive in (("noop", store / "noop.mar"), ("mnist", None)):
        if archive is None:
            archive = ts.build_mnist(store, tmp_path_factory.mktemp("mnist"))
        found = read_extracted(extract(archive, tmp_path_factory.mktemp(name)))
        handlers[name] = create_handler(ModelSpec.model_validate({**found.model, "name": name}))
        handlers[name].load()
    log_dir = tmp_path_factory.mktemp("logs")
    return TestClient(inference_app(LocalRouter(handlers), IngressArgs(log_dir=str(log_dir))))


def test_predictions_of_a_torchserve_handler_are_its_text(inference: TestClient) -> None:
    for content_type, body in (
        ("application/octet-stream", b"test"),
        ("application/json", b'{"data": "test"}'),
    ):
        response = inference.post("/predictions/noop", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200 and response.text == "OK"
        assert response.headers["content-type"].startswith("text/plain")
    assert inference.post("/predictions/noop/1.0", content=b"x").text == "OK"


def test_get_predictions_take_the_query(inference: TestClient) -> None:
    assert inference.get("/predictions/noop?data=test").text == "OK"
    missing = inference.get("/predictions/noop")
    assert missing.status_code == 400 and "data" in message(missing)
    unknown = inference.get("/predictions/InvalidModel")
    assert unknown.status_code == 404 and message(unknown) == "Model not found: InvalidModel"
    version = inference.get("/predictions/noop/1.3.1?data=x")
    assert message(version) == "Model version: 1.3.1 does not exist for model: noop"


def test_mnist_answers_a_digit(inference: TestClient) -> None:
    response = inference.post(
        "/predictions/mnist", content=ts.digit_png(0), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200 and response.json() in range(10)
    multipart = inference.post("/predictions/mnist", files={"data": ("0.png", ts.digit_png(0), "image/png")})
    assert multipart.json() == response.json()


def test_options_describe_one_model(inference: TestClient) -> None:
    document = inference.options("/predictions/mnist").json()
    assert document["info"]["title"] == "RESTful API for: mnist"
    assert {"post", "put", "get"} <= set(document["paths"]["/predictions/mnist"])
    assert "/v2/models/mnist/infer" in document["paths"]
    assert inference.options("/predictions/nosuch").status_code == 404
    assert inference.options("/predictions/mnist/9.9").status_code == 404
    assert "paths" in inference.options("/").json()  # the whole API, as TorchServe
    assert inference.get("/ping/", follow_redirects=False).json() == {"status": "Healthy"}


def test_wrong_methods_and_paths_on_inference(inference: TestClient) -> None:
    for method, path, status, text in (
        ("GET", "/", 405, NOT_ALLOWED),
        ("DELETE", "/predictions/noop", 405, NOT_ALLOWED),
        ("GET", "/predictions", 404, NOT_FOUND),
        ("GET", "/InvalidUrl", 404, NOT_FOUND),
    ):
        response = inference.request(method, path)
        assert response.status_code == status and message(response) == text, (method, path)
