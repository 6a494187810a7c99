"""Every protocol on a real `serve run`, with the clients people use: each Open Inference
route and RPC (tritonclient over HTTP, JSON and binary, and gRPC), KServe v1 over plain HTTP,
TorchServe's gRPC inference and management services through stubs generated from its protos,
every numeric datatype through the ``tensor`` handler, a bad tensor shape on each transport,
and every protocol counted in the metrics and the access log with its model and version.

The ingress serves gRPC itself (``grpc: true``; Serve's proxy is off) on a free port.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import empty_pb2
from tritonclient.utils import InferenceServerException

from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run, trust_test_fixtures
from tests.fixtures.management import make_archive
from tests.fixtures.specs import (
    TENSOR_DATATYPES,
    echo_spec,
    expected_scores,
    sample_array,
    scorer_spec,
    tiny_spec,
)
from tests.fixtures.torchserve_stubs import torchserve_stubs

pytestmark = pytest.mark.e2e

TOKEN = "e2e-protocols-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MODELS = ("tiny", "echo", "scorer")


def model_app(spec) -> dict:  # type: ignore[no-untyped-def]
    return {
        "name": spec.name,
        "route_prefix": None,
        "import_path": "deployments.app:build_model",
        "args": {
            "model": spec.model_dump(mode="json", exclude_none=True),
            "batching": {"max_batch_size": 4},
            "resources": {"num_replicas": 1, "num_cpus": 0.25},
        },
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    root = tmp_path_factory.mktemp("protocols")
    config = trust_test_fixtures(load_config("quickstart.yaml"))
    ingress, management = config["applications"][:2]
    assert ingress["args"]["grpc"] is True  # the shipped config serves gRPC
    config["applications"] = [
        ingress,
        management,
        *(model_app(s) for s in (tiny_spec(), echo_spec(), scorer_spec())),
    ]
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(root / "store"),
        "RAYTORCH_LOG_DIR": str(root / "logs"),
        "RAYTORCH_TOKEN": TOKEN,
    }
    with serve_run(config, extra_env=env) as running:
        running.root = root  # type: ignore[attr-defined]

        def all_ready() -> bool:
            with running.client() as client:
                return all(client.get(f"/v2/models/{m}/ready").status_code == 200 for m in MODELS)

        running.wait_for(all_ready, timeout=300, what="every model ready")
        yield running


def http_client(cluster: ServeCluster) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(cluster.base_url.removeprefix("http://"), network_timeout=120)


def grpc_client(cluster: ServeCluster) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(cluster.grpc_target)


def test_oip_rest_routes(cluster: ServeCluster, cat_png: bytes) -> None:
    with cluster.client() as client:
        assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        metadata = client.get("/v2/models/scorer").json()
        assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
        assert client.get("/v2/models/scorer/versions/1.0").json() == metadata
        assert client.get("/v2/models/tiny/versions/1.0/ready").json()["ready"] is True
        assert client.get("/v2/models/nosuch/ready").json() == {"error": "Model not found: nosuch"}
        request = {"id": "r1", "inputs": [{"name": "data", "shape": [1], "datatype": "BYTES",
                                           "data": [base64.b64encode(cat_png).decode()]}]}  # fmt: skip
        for path in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/1.0/infer"):
            body = client.post(path, json=request).json()
            assert body["id"] == "r1" and body["model_version"] == "1.0"
            assert len(json.loads(body["outputs"][0]["data"][0])) == 3


def test_kserve_v1_over_plain_http(cluster: ServeCluster, cat_png: bytes) -> None:
    with cluster.client() as client:
        assert set(MODELS) <= set(client.get("/v1/models").json()["models"])
        assert client.get("/v1/models/tiny").json() == {"name": "tiny", "ready": True}
        instances = {"instances": [{"b64": base64.b64encode(cat_png).decode()}]}
        for path in ("/v1/models/tiny:predict", "/v1/models/tiny/versions/1.0:predict"):
            response = client.post(path, json=instances)
            assert response.status_code == 200 and len(response.json()["predictions"][0]) == 3
        rows = [[1.0, 2.0, 3.0, 4.0]]
        assert client.post("/v1/models/scorer:predict", json={"instances": rows}).json() == {
            "predictions": [{"scores": expected_scores(rows)[0]}]
        }
        explained = client.post("/v1/models/tiny:explain?n_steps=2", json=instances)
        assert explained.status_code == 200, explained.text
        assert len(explained.json()["explanations"][0]) == 3  # [C][H][W] (tests/e2e/test_explanations.py)


@pytest.mark.parametrize(("transport", "binary"), [("http", False), ("http", True), ("grpc", True)])
def test_every_numeric_datatype_through_the_tensor_handler(
    cluster: ServeCluster, transport: str, binary: bool
) -> None:
    module = triton_http if transport == "http" else triton_grpc
    client = http_client(cluster) if transport == "http" else grpc_client(cluster)
    arrays = {d: sample_array(d) for d in TENSOR_DATATYPES}
    inputs = []
    for datatype, array in arrays.items():
        tensor = module.InferInput(f"in_{datatype.lower()}", list(array.shape), datatype)
        if transport == "http":  # tritonclient sends BF16 over HTTP only as binary data
            tensor.set_data_from_numpy(array, binary_data=binary or datatype == "BF16")
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = None
    if transport == "http":
        outputs = [
            triton_http.InferRequestedOutput(f"out_{d.lower()}", binary_data=binary or d == "BF16")
            for d in arrays
        ]
    result = client.infer("echo", inputs, outputs=outputs)
    for datatype, sent in arrays.items():
        got = result.as_numpy(f"out_{datatype.lower()}")
        assert got.dtype == sent.dtype and np.array_equal(got, sent), datatype


def test_oip_grpc_rpcs(cluster: ServeCluster, cat_png: bytes) -> None:
    client = grpc_client(cluster)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("scorer", "1.0")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("echo")
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs][:2] == [
        ("in_bool", "BOOL", [-1, 3]), ("in_uint8", "UINT8", [-1, 3])
    ]  # fmt: skip
    photo = triton_grpc.InferInput("data", [1], "BYTES")
    photo.set_data_from_numpy(np.array([cat_png], dtype=object))
    (answer,) = client.infer("tiny", [photo], request_id="g1").as_numpy("output-0")
    assert len(json.loads(answer)) == 3


def test_a_bad_tensor_shape_is_400_over_rest_and_invalid_argument_over_grpc(cluster: ServeCluster) -> None:
    request = {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with cluster.client() as client:
        response = client.post("/v2/models/scorer/infer", json=request)
    assert response.status_code == 400
    assert response.json() == {
        "error": "input features: shape [1, 3] does not fit the model's [-1, 4] (-1: any size; the first "
        "dimension is the batch)"
    }
    features = triton_grpc.InferInput("features", [1, 3], "FP32")
    features.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client(cluster).infer("scorer", [features])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "does not fit the model's [-1, 4]" in caught.value.message()


def test_torchserve_grpc_inference(cluster: ServeCluster, cat_png: bytes) -> None:
    stubs = torchserve_stubs()
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        assert json.loads(inference.Ping(empty_pb2.Empty()).health) == {"status": "Healthy"}
        request = stubs.inference_pb2.PredictionsRequest(model_name="tiny", input={"data": cat_png})
        scores = json.loads(inference.Predictions(request).prediction)
        with httpx.Client(base_url=cluster.base_url) as client:
            assert scores == client.post("/predictions/tiny", content=cat_png).json()
        (streamed,) = list(inference.StreamPredictions(request))
        assert json.loads(streamed.prediction) == scores
        bad = stubs.inference_pb2.PredictionsRequest(
            model_name="tiny", input={"data": b"junk"}, sequence_id="s"
        )
        good = stubs.inference_pb2.PredictionsRequest(
            model_name="tiny", input={"data": cat_png}, sequence_id="s"
        )
        answers = list(inference.StreamPredictions2(iter([good, bad, good])))
        assert [bool(a.prediction) for a in answers] == [True, False, True]
        assert answers[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        with pytest.raises(grpc.RpcError) as caught:
            inference.Predictions(
                stubs.inference_pb2.PredictionsRequest(model_name="nosuch", input={"data": b"x"})
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_torchserve_grpc_management(cluster: ServeCluster) -> None:
    stubs = torchserve_stubs()
    pb = stubs.management_pb2
    url = make_archive(Path(cluster.root) / "store", "managed", "1.0")  # type: ignore[attr-defined]
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        management = stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            management.ListModels(pb.ListModelsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        register = pb.RegisterModelRequest(url=url, synchronous=True)
        registered = management.RegisterModel(register, metadata=AUTH, timeout=300)
        assert registered.msg == 'Model "managed" Version: 1.0 registered with 1 initial workers'
        listed = json.loads(management.ListModels(pb.ListModelsRequest(), metadata=AUTH).msg)
        assert "managed" in {m["modelName"] for m in listed["models"]}
        describe = pb.DescribeModelRequest(model_name="managed")
        assert json.loads(management.DescribeModel(describe, metadata=AUTH).msg)[0]["modelVersion"] == "1.0"
        management.SetDefault(pb.SetDefaultRequest(model_name="managed", model_version="1.0"), metadata=AUTH)
        scale = pb.ScaleWorkerRequest(model_name="managed", min_worker=1, synchronous=True)
        assert management.ScaleWorker(scale, metadata=AUTH, timeout=300).msg
        assert grpc_client(cluster).is_model_ready("managed")
        unregister = pb.UnregisterModelRequest(model_name="managed", model_version="1.0")
        assert (
            management.UnregisterModel(unregister, metadata=AUTH, timeout=120).msg
            == 'Model "managed" unregistered'
        )


def test_every_protocol_is_counted_and_logged_with_model_and_version(cluster: ServeCluster) -> None:
    with cluster.client() as client:
        metrics = client.get("/metrics", params={"name[]": "raytorch_requests"}).text
    for protocol in ("kserve_v1", "oip_v2", "grpc_oip", "grpc_torchserve"):
        assert f'model_version="1.0",protocol="{protocol}"' in metrics, protocol
    log = (Path(cluster.root) / "logs" / "access.log").read_text()  # type: ignore[attr-defined]
    for protocol, model in (
        ("grpc_oip", "tiny"),
        ("oip_v2", "echo"),
        ("grpc_torchserve", "tiny"),
        ("kserve_v1", "tiny"),
    ):
        assert f"protocol={protocol} model={model} version=1.0" in log, protocol


def test_grpc_listens_on_the_http_host_only(cluster: ServeCluster) -> None:
    port = int(cluster.grpc_target.rsplit(":", 1)[1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                listening.add(local.rsplit(":", 1)[0])
    # gRPC may take an IPv6 socket bound to the IPv4-mapped address ::ffff:127.0.0.1: loopback too.
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    assert listening and listening <= loopback, f"gRPC port {port} listens on {listening}, not only 127.0.0.1"
