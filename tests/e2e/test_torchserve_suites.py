"""TorchServe's own API suites replayed against the quickstart server on this small machine.

The server is `configs/quickstart.yaml` as `make serve` runs it (its EfficientNet already holds
one of the two cores), with inference protected by the token. The archives are those of
TorchServe's Postman collections and ModelServerTest, built by the real torch-model-archiver
(tests/fixtures/torchserve_archives.py): squeezenet1_1, mnist (its own handler file),
densenet161, resnet-18, resnet-152-batch, and the versioned "noop" archives.

Each test follows one of TorchServe's suites in its order; where we answer differently on
purpose, the assertion says so and docs/torchserve-compatibility.md explains why.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import torchvision

from handlers.archive import extract, read_extracted
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.e2e.serve_cluster import ROOT, ServeCluster, load_config, serve_run
from tests.fixtures import torchserve_archives as ts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

TOKEN = "e2e-torchserve-suites-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REGISTER_S = 300  # densenet161 and resnet152 take a while to build and warm up on 2 cores
IMAGENET = set(torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    root = tmp_path_factory.mktemp("ts-suites")
    store, work = root / "store", root / "work"
    store.mkdir()
    for name in ("squeezenet1_1", "densenet161", "resnet-18", "resnet-152-batch"):
        ts.build_image_classifier(store, work / name, name)
    ts.build_mnist(store, work / "mnist")
    ts.build_handler_only(store, work / "echo", "echo_stream", "1.0", ts.ECHO_STREAM, "echo.py")
    ts.build_handler_only(store, work / "noop", "noop", "1.11", ts.NOOP_CLASS, "service.py")
    ts.build_handler_only(store, work / "noop2", "noop_v2", "1.2.1", ts.NOOP_CLASS, "service.py")
    ts.build_handler_only(store, work / "entry", "noop_entrypntfunc", "1.0", ts.NOOP_FUNCTION, "entry:handle")
    ts.build_handler_only(store, work / "custom", "noop-customized", "1.0", ts.NOOP_CUSTOMIZED, "custom.py")
    ts.build_handler_only(store, work / "broken", "init-error", "1.0", ts.INIT_ERROR, "broken.py")
    config = load_config("quickstart.yaml")
    config["applications"][0]["args"]["inference_auth"] = True  # TorchServe's token test needs it
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_LOG_DIR": str(root / "logs"),
        "RAYTORCH_TOKEN": TOKEN,
        "PYTHONPATH": str(ROOT),  # replicas import this checkout, not another editable install
    }
    with serve_run(config, extra_env=env) as cluster:
        cluster.store = store  # type: ignore[attr-defined]

        def up() -> bool:
            with cluster.client() as client:
                ready = client.get("/models", headers=AUTH).status_code == 200
                return ready and client.get("/ping").status_code == 200

        cluster.wait_for(up, timeout=300, what="the quickstart server")
        yield cluster


@pytest.fixture
def api(server: ServeCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=REGISTER_S) as client:
        yield client


def expect(response: httpx.Response, status: int, text: str | None = None) -> httpx.Response:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    if text is not None:
        body = response.json()
        assert text in (body.get("status") or body.get("message", "")), body
    return response


def assert_top5_imagenet(answer: dict) -> None:
    """What TorchServe's image_classification validator checks, minus the trained values."""
    assert len(answer) == 5 and set(answer) <= IMAGENET, answer
    values = list(answer.values())
    assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)


def test_management_collection(api: httpx.Client) -> None:
    """test/postman/management_data.json, in order (its cases that need downloads use the store)."""
    # The quickstart's model holds a whole core already: registrations share the cores left.
    expect(api.post("/models?url=squeezenet1_1.mar&model_name=squeezenet1_1"), 200, "registered with 1")
    expect(api.post("/models?url=mnist.mar&model_name=mnist"), 200)
    expect(api.post("/models?url=densenet161.mar&model_name=densenet161"), 200)
    # Re-registration: 409 (TorchServe: 500, from its download clashing with the stored file).
    expect(api.post("/models?url=densenet161.mar&model_name=densenet161"), 409, "already registered")
    expect(api.delete("/models/densenet161"), 200, 'Model "densenet161" unregistered')
    expect(api.post("/models"), 400, "Parameter url is required.")
    expect(api.delete("/models/mnist"), 200)
    # An invalid handler: 400 at once (TorchServe: 200 with no worker, then 500 on scale-up).
    expect(api.post("/models?url=mnist.mar&model_name=mnist&handler=invalidHandler"), 400, "invalidHandler")
    assert len(expect(api.get("/models/squeezenet1_1/all"), 200).json()) == 1
    assert expect(api.get("/models/squeezenet1_1/1.0"), 200).json()[0]["modelVersion"] == "1.0"
    described = expect(api.get("/models/squeezenet1_1"), 200).json()[0]
    print("\ndescribe squeezenet1_1:", described)
    assert described["workers"][0]["status"] == "READY" and described["workers"][0]["memoryUsage"] > 0
    # An idle replica: nothing pending, room for 8 batches of the default 8 (TorchServe: a queue of 100).
    assert described["jobQueueStatus"] == {"remainingCapacity": 64, "pendingRequests": 0}
    expect(api.delete("/models/squeezenet1_1"), 200)
    expect(api.post("/models?url=squeezenet1_1.mar&model_name=squeezenet1_1&runtime=python4"), 400)
    expect(api.get("/models?limit=&next_page_token="), 200)

    expect(api.post("/models?url=squeezenet1_1.mar&model_name=squeezenet1_1"), 200)
    expect(api.put("/models/squeezenet1_1?min_worker=1"), 202)
    expect(api.put("/models/squeezenet1_1?min_worker=1&synchronous=true"), 200, "Workers scaled to 1")
    expect(api.put("/models/squeezenet1_1/1.0?min_worker=1&synchronous=true"), 200, "version: 1.0")
    expect(api.put("/models/squeezenet1_1/0.0?min_worker=1&synchronous=true"), 404)
    expect(api.put("/models/squeezenet1_1?min_worker=1&number_gpu=1"), 202)
    expect(api.put("/models/squeezenet1_1/1.0/set-default"), 200, "successfully updated")
    expect(api.put("/models/squeezenet1_1/0.0/set-default"), 404)
    expect(api.put("/models/squeezenet0_1/1.0/set-default"), 404)
    expect(api.delete("/models/squeezenet1_1"), 200)

    handler = "serve/ts/torch_handler/image_classifier.py:handle"  # TorchServe's path of its handler
    expect(api.post(f"/models?url=squeezenet1_1.mar&model_name=squeezenet1_1&handler={handler}"), 200)
    expect(api.delete("/models/squeezenet1_1"), 200)
    # No time to start: a deadline answer, 504 (TorchServe: 500), and nothing left registered.
    expect(api.post("/models?url=squeezenet1_1.mar&batch_size=3&initial_workers=3&startup_timeout=0"), 504)
    expect(api.get("/models/squeezenet1_1"), 404)
    expect(api.post("/models?url=squeezenet1_1.mar&startup_timeout=0&initial_workers=0"), 200, "0 initial")
    expect(api.delete("/models/squeezenet1_1"), 200)

    expect(api.post("/models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2"), 200)
    assert expect(api.get("/models/resnet152"), 200).json()[0]["batchSize"] == 2
    expect(api.delete("/models/resnet152"), 200)
    # Values TorchServe silently replaces with its defaults are refused, naming the parameter.
    for query, named in (
        ("batch_size=dd&initial_workers=1", "batch_size"),
        ("batch_size=2&initial_workers=1&max_batch_delay=junk", "max_batch_delay"),
    ):
        bad = expect(api.post(f"/models?url=resnet-152-batch.mar&model_name=resnet152&{query}"), 400)
        assert named in bad.json()["message"]
    expect(api.post("/models?url=squeezenet1_1.mar&model_name=squeezenet1_1&initial_workers=-1"), 400)

    expect(api.post("/models?url=resnet-18.mar&model_name=resnet-18&synchronous=true"), 200)
    expect(api.delete("/models/resnet-18"), 200)
    expect(api.post("/models?url=resnet-18.mar&model_name=resnet-18&synchronous=-1"), 400)
    # Asynchronous: 202 here, as one worker starts by default (TorchServe's default is 0 workers).
    expect(api.post("/models?url=resnet-18.mar&model_name=resnet-18&synchronous=false"), 202)
    page = expect(api.get("/models?limit=1"), 200).json()
    assert len(page["models"]) == 1 and page["nextPageToken"] == "1"
    expect(api.get("/models?limit=-1"), 200)
    assert len(expect(api.get("/models?limit=1&next_page_token=1"), 200).json()["models"]) == 1
    expect(api.get("/models?limit=1&next_page_token=-1"), 200)
    expect(api.put("/models/resnet-18?number_gpu=10"), 202)
    expect(api.put("/models/resnet-18?number_gpu=-1"), 202)
    expect(api.put("/models/resnet-18?min_worker=1&max_worker=1&synchronous=true"), 200)
    expect(api.put("/models/resnet-18?min_worker=1&max_worker=1&synchronous=false"), 202)
    expect(api.put("/models/resnet-18?timeout=-1"), 202)
    expect(api.put("/models/resnet-18?timeout=0"), 202)
    expect(api.post("/models?url=&model_name=resnet-18"), 404)
    expect(api.post("/models?url=https://example.invalid/mar_files/invalid-resnet-18.mar"), 400)
    expect(api.get("/models/invalid_squeezenet1_1"), 404, "Model not found: invalid_squeezenet1_1")
    expect(api.get("/models/squeezenet1_1/0.0"), 404)
    assert expect(api.get("/models?next_page_token=12"), 200).json()["models"] == []
    expect(api.put("/models/resnet-18?min_worker=1&synchronous=Nan"), 400)  # TorchServe: 202
    expect(api.put("/models/resnet-18?min_worker=nan&synchronous=nan"), 400)  # TorchServe: 202
    expect(api.put("/models/resnet-18"), 202)
    expect(api.put("/models/resnet181?min_worker=1"), 404)
    expect(api.put("/models/resnet-18?min_worker=2&max_worker=1"), 400, "max_worker cannot be less")
    expect(api.put("/models/resnet-18?min_worker=1"), 202)
    expect(api.put("/models/resnet-18?min_worker=0"), 202)
    expect(api.put("/models/resnet-18?min_worker=-1"), 400)  # TorchServe: 500
    expect(api.put("/models/resnet-18?max_worker=-1"), 400)
    expect(api.put("/models/invalid_squeezenet1_1/1.0/set-default"), 404)
    expect(api.delete("/models/resnet-18"), 200)
    expect(api.delete("/models/squeezenet1_1/0.0"), 404)
    for query in ("synchronous=true", "synchronous=nan", "timeout=true", "timeout=true&synchronous=-1"):
        expect(api.post("/models?url=squeezenet1_1.mar&model_name=squeezenet1_1"), 200)
        expect(api.delete(f"/models/squeezenet1_1/?{query}"), 200)  # trailing slash, ignored parameters
    expect(api.delete("/models/invalid_squeezenet1_1"), 404)
    assert [m["modelName"] for m in api.get("/models").json()["models"]] == ["efficientnet_lite0"]


@pytest.mark.parametrize("name", ["squeezenet1_1", "densenet161", "resnet-18", "resnet-152-batch"])
def test_inference_collection_image_models(api: httpx.Client, name: str, cat_jpeg: bytes) -> None:
    """test/postman/inference_data.json: register with one worker, predict the kitten, unregister."""
    expect(api.post(f"/models?url={name}.mar&model_name={name}&initial_workers=1&synchronous=true"), 200)
    try:
        answer = expect(api.post(f"/predictions/{name}", files={"data": ("kitten.jpg", cat_jpeg)}), 200)
        assert_top5_imagenet(answer.json())
        assert_top5_imagenet(expect(api.put(f"/predictions/{name}", content=cat_jpeg), 200).json())
    finally:
        expect(api.delete(f"/models/{name}"), 200)


def test_mnist_with_its_own_handler_file(api: httpx.Client, server: ServeCluster, tmp_path: Path) -> None:
    """The MNIST case of the inference collection and of ModelServerTest: a grayscale 28x28
    network behind a ts.torch_handler subclass answers the digit, as plain text."""
    expect(api.post("/models?url=mnist.mar&model_name=mnist&initial_workers=1&synchronous=true"), 200)
    try:
        image = ts.digit_png(0)
        answer = expect(
            api.post("/predictions/mnist", content=image, headers={"Content-Type": "image/png"}), 200
        )
        # The archive's own network and handler, in this process, give the same digit.
        found = read_extracted(extract(server.store / "mnist.mar", tmp_path / "mnist"))  # type: ignore[attr-defined]
        local = create_handler(ModelSpec.model_validate(found.model))
        local.load()
        assert answer.text == str(local.predict(image, "image/png"))
        assert (
            expect(api.post("/predictions/mnist", files={"data": ("0.png", image)}), 200).text == answer.text
        )
        bad = expect(api.post("/predictions/mnist", content=b"not a png"), 400)
        assert "preprocess refused" in bad.json()["message"]
        metadata = expect(api.get("/models/mnist?customized=true"), 200).json()[0]["customizedMetadata"]
        assert metadata["torchserveHandler"] == "mnist_handler.py" and metadata["perRequestPreprocess"]
    finally:
        expect(api.delete("/models/mnist"), 200)


def test_mnist_explanations_are_torchserve_integrated_gradients(
    api: httpx.Client, server: ServeCluster, tmp_path: Path
) -> None:
    """TorchServe's MNIST example explained: its VisionHandler's answer, Captum's Integrated
    Gradients (15 steps) of the requested class, [1][28][28]. Here IG is computed on the
    archive's own network and transform, as TorchServe's ``get_insights`` does;
    benchmarks/torchserve_explain_stream.py compares the answer with TorchServe 0.12's."""
    from captum.attr import IntegratedGradients
    from PIL import Image
    from torchvision import transforms

    expect(api.post("/models?url=mnist.mar&model_name=mnist&initial_workers=1&synchronous=true"), 200)
    try:
        image = ts.digit_png(3)
        png = {"Content-Type": "image/png"}
        answer = expect(api.post("/explanations/mnist?target=7", content=image, headers=png), 200).json()
        folder = extract(server.store / "mnist.mar", tmp_path / "mnist")  # type: ignore[attr-defined]
        namespace: dict = {}
        exec(compile((folder / "mnist.py").read_text(), "mnist.py", "exec"), namespace)
        network = namespace["DigitNet"]()
        network.load_state_dict(torch.load(folder / "mnist_cnn.pt", weights_only=True))
        network.eval()
        prepare = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        pixels = prepare(Image.open(io.BytesIO(image))).unsqueeze(0)
        expected = IntegratedGradients(network).attribute(pixels, target=7, n_steps=15)[0]
        assert torch.allclose(torch.tensor(answer), expected, atol=1e-6), "not TorchServe's attributions"
        # No target: TorchServe's default (class 0) for a TorchServe handler file.
        default = expect(api.post("/explanations/mnist", content=image, headers=png), 200).json()
        zero = IntegratedGradients(network).attribute(pixels, target=0, n_steps=15)[0]
        assert torch.allclose(torch.tensor(default), zero, atol=1e-6)
    finally:
        expect(api.delete("/models/mnist"), 200)


def test_torchserve_streaming_test_handler(api: httpx.Client) -> None:
    """TorchServe's test_send_intermediate_prediction_response.py: three intermediate "hello"
    parts, then "hello world "; TorchServe 0.12 sends them as 4 HTTP chunks."""
    expect(api.post("/models?url=echo_stream.mar&initial_workers=1&synchronous=true"), 200)
    try:
        with api.stream(
            "POST", "/predictions/echo_stream", content=b"42", headers={"Accept": "text/event-stream"}
        ) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        assert events == ["data: hello"] * 3 + ["data: hello world "]  # TorchServe's 4 chunks
        streamed = expect(api.post("/predictions/echo_stream?stream=true", content=b"42"), 200)
        assert (
            streamed.text == "hellohellohellohello world "
            and streamed.headers["transfer-encoding"] == "chunked"
        )
        # Not asked to stream: the same bytes as one answer (TorchServe chunks it anyway).
        assert expect(api.post("/predictions/echo_stream", content=b"42"), 200).text == streamed.text
    finally:
        expect(api.delete("/models/echo_stream"), 200)


def test_model_server_cases(api: httpx.Client) -> None:
    """ModelServerTest.java's registration, version, describe and prediction cases."""
    body = "{'url':'noop.mar', 'model_name':'noop', 'initial_workers':'1', 'synchronous':'true'}"
    registered = api.post("/models", content=body, headers={"Content-Type": "application/json"})
    expect(registered, 200, 'Model "noop" Version: 1.11 registered with 1 initial workers')
    assert expect(api.post("/predictions/noop", content=b"test"), 200).text == "OK"
    assert expect(api.get("/predictions/noop?data=test"), 200).text == "OK"
    assert expect(api.options("/predictions/noop"), 200).json()["info"]["title"] == "RESTful API for: noop"
    assert "/models/noop" in expect(api.options("/models/noop"), 200).json()["paths"]
    expect(api.delete("/models/noop"), 200, 'Model "noop" unregistered')

    for url in ("noop.mar", "noop_v2.mar"):
        expect(api.post(f"/models?url={url}&model_name=noopversioned&initial_workers=1"), 200)
    assert expect(api.get("/models/noopversioned"), 200).json()[0]["modelVersion"] == "1.11"
    assert {d["modelVersion"] for d in api.get("/models/noopversioned/all").json()} == {"1.11", "1.2.1"}
    assert expect(api.post("/predictions/noopversioned/1.11", content=b"x"), 200).text == "OK"
    expect(api.get("/predictions/noopversioned/1.3.1"), 404, "Model version: 1.3.1 does not exist for model")
    expect(api.get("/models/noopversioned/1.3.1"), 404, "Model version: 1.3.1 does not exist for model")
    expect(api.put("/models/noopversioned/1.2.1/set-default"), 200, 'to "1.2.1"')
    expect(api.put("/models/noopversioned/3.3.3/set-default"), 404, "Model version 3.3.3 does not exist")
    expect(api.delete("/models/noopversioned/1.2.1"), 403, "Cannot remove default version")
    assert api.post("/predictions/noopversioned", content=b"x").headers["x-model-version"] == "1.2.1"
    expect(api.delete("/models/noopversioned/1.11"), 200)
    expect(api.delete("/models/noopversioned/1.2.1"), 200)

    expect(api.post("/models?url=noop_entrypntfunc.mar&initial_workers=1"), 200)
    assert expect(api.post("/predictions/noop_entrypntfunc", content=b"x"), 200).text == "OK"
    expect(api.delete("/models/noop_entrypntfunc"), 200)
    expect(api.post("/models?url=noop-customized.mar&initial_workers=1"), 200)
    customized = expect(api.get("/models/noop-customized/1.0?customized=true"), 200).json()[0]
    assert customized["customizedMetadata"] == {"data1": "1", "data2": "2"}
    expect(api.delete("/models/noop-customized/1.0"), 200)

    # A model whose workers cannot start: registered with none, then a 500 naming why.
    expect(api.post("/models?url=init-error.mar&initial_workers=0"), 200, "0 initial workers")
    failed = expect(api.put("/models/init-error?min_worker=1&synchronous=true"), 500)
    assert "Failed to start workers for model init-error" in failed.json()["message"]
    assert "this model cannot start" in failed.json()["message"]
    assert api.get("/ping").status_code in (200, 500)
    expect(api.delete("/models/init-error"), 200)
    assert expect(api.get("/ping"), 200).json() == {"status": "Healthy"}


def test_token_authorization(server: ServeCluster) -> None:
    """test/pytest/test_token_authorization.py: the right token works, a wrong one does not
    (401 here; TorchServe answers 400)."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert client.get("/models/efficientnet_lite0", headers=AUTH).status_code == 200
        for headers in ({"Authorization": "Bearer abcd1234"}, {}):
            assert client.get("/models/efficientnet_lite0", headers=headers).status_code == 401
            refused = client.post("/predictions/efficientnet_lite0", content=b"x", headers=headers)
            assert refused.status_code == 401 and refused.json()["type"] == "UnauthorizedException"
        image = ts.digit_png(0)
        assert client.post("/predictions/efficientnet_lite0", content=image, headers=AUTH).status_code == 200


def test_torchserve_examples_answer_as_torchserve(
    api: httpx.Client, server: ServeCluster, tmp_path: Path
) -> None:
    """TorchServe's examples that name its default handlers or its metrics API (issue 25):
    image_segmenter/fcn, object_detector/fast-rcnn, text_classification and custom_metrics,
    built as their READMEs say, answer on the server what the same archive answers through
    our loading path in this process (tests/unit/test_torchserve_examples.py compares that
    with TorchServe's own handler classes), and custom metrics appear on /metrics."""
    from tests.fixtures import torchserve_examples as ex

    store: Path = server.store  # type: ignore[attr-defined]
    vocab = {"<unk>": 0}  # the sample text's words and pairs, as the handler cleans them
    words = ex.SAMPLE_TEXT.lower().rstrip(".").split()
    for token in [*words, *(" ".join(pair) for pair in itertools.pairwise(words))]:
        vocab.setdefault(token, len(vocab))
    cases = [
        (ex.build_segmenter(store, tmp_path / "fcn", "fcn"), ex.photo(), "image/jpeg"),
        (ex.build_detector(store, tmp_path / "frcnn", "fast-rcnn"), ex.photo(seed=3), "image/jpeg"),
        (ex.build_text_classifier(store, tmp_path / "text", vocab), ex.SAMPLE_TEXT.encode(), "text/plain"),
        (ex.build_custom_metrics(store, tmp_path / "metrics"), ts.digit_png(3), "image/png"),
    ]
    for archive, body, content_type in cases:
        name = archive.stem
        expect(api.post(f"/models?url={archive.name}&initial_workers=1&synchronous=true"), 200)
        try:
            answer = expect(
                api.post(f"/predictions/{name}", content=body, headers={"Content-Type": content_type}), 200
            )
            found = read_extracted(extract(archive, tmp_path / f"x-{name}"))
            local = create_handler(ModelSpec.model_validate(found.model))
            local.load()
            assert answer.json() == local.predict(body, content_type), name
        finally:
            if name == "mnist_custom_metrics":
                metrics = expect(api.get("/metrics"), 200).text
                assert "InferenceRequestCount_total{" in metrics
                assert (
                    'RequestBatchSize{Hostname="' in metrics and 'ModelName="mnist_custom_metrics"' in metrics
                )
            expect(api.delete(f"/models/{name}"), 200)
