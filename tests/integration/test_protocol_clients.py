"""The clients people use, against the ingress's real HTTP and gRPC servers (no Ray):
tritonclient over HTTP (JSON and binary data) and gRPC, and stubs generated from TorchServe's
protos for its inference and management services. Models run in-process (LocalRouter);
management calls go through the management API's own app over a fake Serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from deployments.common.forwarding import ForwardedResponse, ManagementCall, call_asgi
from deployments.common.management_args import ManagementArgs
from deployments.common.settings import IngressArgs
from deployments.management.api import MOUNT_PATH, create_management_app
from deployments.management.grpc_calls import as_http
from deployments.management.manager import ModelManager
from handlers.handler_catalog import create_handler
from tests.fixtures.inference import LocalRouter
from tests.fixtures.live_servers import LiveServers, live_servers
from tests.fixtures.management import FakeServe, make_archive
from tests.fixtures.specs import (
    TENSOR_DATATYPES,
    echo_spec,
    expected_scores,
    sample_array,
    scorer_spec,
    tiny_spec,
)
from tests.fixtures.torchserve_stubs import torchserve_stubs

TOKEN = "clients-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MODULES = {"http": triton_http, "grpc": triton_grpc}


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    handlers = {}
    for spec in (tiny_spec(), echo_spec(), scorer_spec()):
        handlers[spec.name] = create_handler(spec)
        handlers[spec.name].load()
    return LocalRouter(handlers)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> ModelManager:
    root = tmp_path_factory.mktemp("management")
    args = ManagementArgs(
        state_dir=str(root / "state"),
        model_store=str(root / "store"),
        propagation_s=0,
        trusted_modules=["tests.fixtures"],
    )
    return ModelManager(args, FakeServe())


@pytest.fixture(scope="module")
def live(
    router: LocalRouter, manager: ModelManager, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServers]:
    app = create_management_app(manager, TOKEN)

    async def manage(call: ManagementCall) -> ForwardedResponse:
        return await call_asgi(app, as_http(call), root_path=MOUNT_PATH)

    # The session-wide RAYTORCH_LOG_DIR (tests/conftest.py) would win over log_dir and mix this
    # module's JSON lines with other tests' text lines; this module reads its own file.
    logs = str(tmp_path_factory.mktemp("logs"))
    settings = IngressArgs(access_log="json", log_dir=logs, max_body_bytes=1_000_000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYTORCH_LOG_DIR", logs)
        with live_servers(router, settings, manage=manage) as servers:
            yield servers


def client(live: LiveServers, transport: str):  # -> tritonclient InferenceServerClient
    return MODULES[transport].InferenceServerClient(
        live.http_url if transport == "http" else live.grpc_target
    )


def infer_input(transport: str, name: str, array: np.ndarray, datatype: str, binary: bool = True):
    tensor = MODULES[transport].InferInput(name, list(array.shape), datatype)
    if transport == "http":
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


# -- tritonclient ---------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclient_health_and_metadata(live: LiveServers, transport: str) -> None:
    triton = client(live, transport)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("scorer") and triton.is_model_ready("tiny", "1.0")
    assert not triton.is_model_ready("nosuch")
    server = triton.get_server_metadata()
    extensions = server["extensions"] if transport == "http" else list(server.extensions)
    assert "binary_tensor_data" in extensions
    metadata = triton.get_model_metadata("scorer", **({"as_json": True} if transport == "grpc" else {}))
    assert metadata["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": ["-1", "4"] if transport == "grpc" else [-1, 4]}
    ]
    assert metadata["outputs"][0]["name"] == "scores" and metadata["platform"] == "pytorch"


@pytest.mark.parametrize(("transport", "binary"), [("http", False), ("http", True), ("grpc", True)])
def test_tritonclient_every_numeric_datatype(live: LiveServers, transport: str, binary: bool) -> None:
    arrays = {d: sample_array(d) for d in TENSOR_DATATYPES}
    # tritonclient sends BF16 over HTTP only as binary data; the others go as asked.
    inputs = [
        infer_input(transport, f"in_{d.lower()}", a, d, binary or d == "BF16") for d, a in arrays.items()
    ]
    outputs = None
    if transport == "http":  # ask for JSON or binary answers explicitly
        outputs = [
            triton_http.InferRequestedOutput(f"out_{d.lower()}", binary_data=binary or d == "BF16")
            for d in arrays
        ]
    result = client(live, transport).infer("echo", inputs, outputs=outputs, request_id="every-type")
    for datatype, sent in arrays.items():
        got = result.as_numpy(f"out_{datatype.lower()}")
        assert got.dtype == sent.dtype and got.shape == sent.shape, datatype
        assert np.array_equal(got, sent), datatype
    response = result.get_response()
    assert (response["id"] if transport == "http" else response.id) == "every-type"


@pytest.mark.parametrize(("transport", "binary"), [("http", False), ("http", True), ("grpc", True)])
def test_tritonclient_bytes_image_answers_json_strings(
    live: LiveServers, transport: str, binary: bool, cat_png: bytes
) -> None:
    import base64

    payload = cat_png if binary else base64.b64encode(cat_png)  # JSON carries BYTES as base64 text
    inputs = [infer_input(transport, "data", np.array([payload], dtype=object), "BYTES", binary)]
    result = client(live, transport).infer("tiny", inputs)
    (answer,) = result.as_numpy("output-0")
    scores = json.loads(answer)
    assert len(scores) == 3 and all(0 <= p <= 1 for p in scores.values())


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclient_bad_shape_is_a_clear_error(live: LiveServers, transport: str) -> None:
    features = np.zeros((2, 3), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client(live, transport).infer("scorer", [infer_input(transport, "features", features, "FP32")])
    assert "shape [2, 3] does not fit the model's [-1, 4]" in caught.value.message()
    expected = "400" if transport == "http" else "StatusCode.INVALID_ARGUMENT"
    assert caught.value.status() == expected


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclient_scores_match_the_model(live: LiveServers, transport: str) -> None:
    features = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)
    result = client(live, transport).infer(
        "scorer", [infer_input(transport, "features", features, "FP32")], model_version="1.0"
    )
    assert result.as_numpy("scores").tolist() == expected_scores(features.tolist())
    with pytest.raises(InferenceServerException) as caught:
        client(live, transport).infer("nosuch", [infer_input(transport, "features", features, "FP32")])
    assert caught.value.status() == ("404" if transport == "http" else "StatusCode.NOT_FOUND")


def test_grpc_predictions_are_counted_and_logged(live: LiveServers) -> None:
    features = np.array([[1, 2, 3, 4]], np.float32)
    client(live, "grpc").infer("scorer", [infer_input("grpc", "features", features, "FP32")], request_id="x")
    metrics = live.telemetry.metrics.render().decode()
    assert 'model_name="scorer",model_version="1.0",protocol="grpc_oip"' in metrics
    live.telemetry.access.flush()
    lines = [json.loads(line) for line in Path(live.telemetry.access.path).read_text().splitlines()]
    infer = [
        r
        for r in lines
        if r["path"] == "/inference.GRPCInferenceService/ModelInfer" and r["model"] == "scorer"
    ]
    assert (
        infer
        and infer[-1]["version"] == "1.0"
        and infer[-1]["status"] == 200
        and infer[-1]["protocol"] == "grpc_oip"
    )


# -- TorchServe's gRPC APIs, with stubs generated from its protos -----------------------------------
@pytest.fixture(scope="module")
def channel(live: LiveServers) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live.grpc_target) as channel:
        yield channel


def test_torchserve_ping_and_predictions(channel: grpc.Channel, cat_png: bytes) -> None:
    stubs = torchserve_stubs()
    inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    health = inference.Ping(__import__("google.protobuf.empty_pb2", fromlist=["Empty"]).Empty())
    assert json.loads(health.health) == {"status": "Healthy"}
    request = stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"data": cat_png})
    scores = json.loads(inference.Predictions(request).prediction)
    assert len(scores) == 3
    versioned = stubs.inference_pb2.PredictionsRequest(
        model_name="tiny", model_version="1.0", input={"data": cat_png}
    )
    assert json.loads(inference.Predictions(versioned).prediction) == scores
    streamed = list(inference.StreamPredictions(request))
    assert len(streamed) == 1 and json.loads(streamed[0].prediction) == scores


def test_torchserve_prediction_errors_have_grpc_codes(channel: grpc.Channel) -> None:
    stubs = torchserve_stubs()
    inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    cases = [
        (
            stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"data": b"not an image"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stubs.inference_pb2.PredictionsRequest(model_name="nosuch", input={"data": b"x"}),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"a": b"1", "b": b"2"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            inference.Predictions(request)
        assert caught.value.code() == code, caught.value.details()
    assert "keys sent: a, b" in caught.value.details()


def test_torchserve_bidirectional_stream_reports_errors_per_message(
    channel: grpc.Channel, cat_png: bytes
) -> None:
    stubs = torchserve_stubs()
    inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    messages = [
        stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"data": cat_png}, sequence_id="s1"),
        stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"data": b"junk"}, sequence_id="s1"),
        stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"data": cat_png}, sequence_id="s1"),
    ]
    answers = list(inference.StreamPredictions2(iter(messages)))
    assert [a.sequence_id for a in answers] == ["s1", "s1", "s1"]
    assert json.loads(answers[0].prediction) == json.loads(answers[2].prediction)
    assert answers[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and answers[1].status.message


def test_torchserve_management_over_grpc(channel: grpc.Channel, manager: ModelManager) -> None:
    stubs = torchserve_stubs()
    pb = stubs.management_pb2
    management = stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)
    auth = tuple(AUTH.items())
    with pytest.raises(grpc.RpcError) as caught:
        management.ListModels(pb.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    url = make_archive(manager.model_store, "managed", "1.0")
    reply = management.RegisterModel(pb.RegisterModelRequest(url=url, synchronous=True), metadata=auth)
    assert reply.msg == 'Model "managed" Version: 1.0 registered with 1 initial workers'
    with pytest.raises(grpc.RpcError) as caught:
        management.RegisterModel(pb.RegisterModelRequest(url=url, synchronous=True), metadata=auth)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = json.loads(management.ListModels(pb.ListModelsRequest(limit=10), metadata=auth).msg)
    assert {"modelName": "managed", "modelUrl": url} in listed["models"]
    described = json.loads(
        management.DescribeModel(pb.DescribeModelRequest(model_name="managed"), metadata=auth).msg
    )
    assert described[0]["modelVersion"] == "1.0" and described[0]["batchSize"]
    scaled = management.ScaleWorker(
        pb.ScaleWorkerRequest(model_name="managed", min_worker=2, synchronous=True), metadata=auth
    )
    assert "2" in scaled.msg
    management.SetDefault(pb.SetDefaultRequest(model_name="managed", model_version="1.0"), metadata=auth)
    with pytest.raises(grpc.RpcError) as caught:
        management.DescribeModel(pb.DescribeModelRequest(model_name="nosuch"), metadata=auth)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "nosuch" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        management.ScaleWorker(pb.ScaleWorkerRequest(model_name="bad name!"), metadata=auth)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    done = management.UnregisterModel(
        pb.UnregisterModelRequest(model_name="managed", model_version="1.0"), metadata=auth
    )
    assert done.msg == 'Model "managed" unregistered'
