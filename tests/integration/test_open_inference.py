"""KServe v1 and Open Inference Protocol v2 over REST in-process, with real handlers: an
image classifier (BYTES), a model echoing one input per numeric datatype and a linear scorer
(both through the ``tensor`` handler); plus name checks on every route."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments.common.settings import IngressArgs
from handlers.handler_catalog import create_handler
from handlers.tensor_json import bf16_bits, bf16_values
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import TENSOR_DATATYPES, echo_spec, expected_scores, scorer_spec, tiny_spec
from tests.integration.test_http_api import assert_error

LIMIT = 2_000_000
TOKEN = "oip-token"


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    handlers = {}
    for spec in (tiny_spec(), echo_spec(), scorer_spec()):
        handlers[spec.name] = create_handler(spec)
        handlers[spec.name].load()
    return LocalRouter(handlers)


@pytest.fixture
def client(router: LocalRouter, tmp_path, monkeypatch) -> TestClient:
    router.down.clear()
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    return TestClient(inference_app(router, IngressArgs(max_body_bytes=LIMIT, access_log="json")))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_oip_error(response, status: int, fragment: str) -> None:
    """The Open Inference Protocol's error answer: ``{"error": message}`` and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert fragment.lower() in body["error"].lower(), body["error"]


def echo_request(json_values: bool = True) -> dict:
    inputs = []
    for datatype in TENSOR_DATATYPES:
        data = [[True, False, True], [False, False, True]] if datatype == "BOOL" else [[-1, 2, 3], [4, 5, 6]]
        if datatype.startswith("U"):
            data = [[1, 2, 3], [250, 5, 6]]
        if datatype in ("FP16", "BF16", "FP32", "FP64"):
            data = [[-1.5, 0.25, 3.0], [1e3, -2.0, 0.0]]
        inputs.append({"name": f"in_{datatype.lower()}", "shape": [2, 3], "datatype": datatype, "data": data})
    return {"id": "echo-1", "inputs": inputs}


# -- KServe v1 ---------------------------------------------------------------------------------
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


def test_v1_tensor_instances_are_rows(client: TestClient) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]]
    response = client.post("/v1/models/scorer:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [{"scores": s} for s in expected_scores(rows)]}
    named = client.post("/v1/models/scorer:predict", json={"instances": [{"features": rows[0]}]})
    assert named.json() == {"predictions": [{"scores": expected_scores(rows[:1])[0]}]}


def test_v1_list_ready_and_explain(client: TestClient, router: LocalRouter, cat_png: bytes) -> None:
    assert client.get("/v1/models").json() == {"models": ["echo", "scorer", "tiny"]}
    assert client.get("/v1/models/tiny").json() == {"name": "tiny", "ready": True}
    instances = {"instances": [{"b64": b64(cat_png)}, {"b64": b64(cat_png)}]}
    explained = client.post("/v1/models/tiny:explain?n_steps=4", json=instances)
    assert explained.status_code == 200, explained.text
    maps = explained.json()["explanations"]
    assert len(maps) == 2 and len(maps[0]) == 3 and len(maps[0][0]) == 56 and len(maps[0][0][0]) == 56
    not_an_image = client.post("/v1/models/tiny:explain", json={"instances": [{"b64": "aGk="}]})
    assert_error(not_an_image, 400, "BadRequestException", "instances[0]")
    assert_error(
        client.post("/v1/models/echo:explain", json=instances), 501, "NotImplementedException", "echo"
    )
    assert_error(client.post("/v1/models/nosuch:explain", json={}), 404, "ModelNotFoundException", "nosuch")
    router.down["tiny"] = "weights missing"
    assert client.get("/v1/models/tiny").status_code == 503


# -- OIP v2: metadata and health -----------------------------------------------------------------
def test_server_metadata_names_the_extensions(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "raytorch" and body["version"]
    assert {"binary_tensor_data", "parameters", "kserve_v1", "torchserve_inference"} <= set(
        body["extensions"]
    )


def test_model_metadata_has_real_names_datatypes_and_shapes(client: TestClient) -> None:
    echo = client.get("/v2/models/echo").json()
    assert echo["name"] == "echo" and echo["versions"] == ["1.0"] and echo["platform"] == "pytorch"
    assert [(i["name"], i["datatype"], i["shape"]) for i in echo["inputs"]] == [
        (f"in_{d.lower()}", d, [-1, 3]) for d in TENSOR_DATATYPES
    ]
    assert echo["outputs"][7] == {"name": "out_bf16", "datatype": "BF16", "shape": [-1, 3]}
    tiny = client.get("/v2/models/tiny/versions/1.0").json()
    assert tiny["inputs"] == [{"name": "data", "datatype": "BYTES", "shape": [-1]}]
    assert tiny["outputs"] == [{"name": "output-0", "datatype": "BYTES", "shape": [-1]}]
    assert_oip_error(client.get("/v2/models/nosuch"), 404, "Model not found: nosuch")
    assert_oip_error(client.get("/v2/models/tiny/versions/9.9"), 404, "version")


def test_health_and_model_readiness(client: TestClient, router: LocalRouter) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "version": "1.0", "ready": True}
    assert client.get("/v2/models/tiny/versions/1.0/ready").status_code == 200
    assert_oip_error(client.get("/v2/models/nosuch/ready"), 404, "nosuch")
    router.down["tiny"] = "weights missing"
    not_ready = client.get("/v2/models/tiny/ready")
    assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
    assert "weights missing" in not_ready.json()["error"]
    server = client.get("/v2/health/ready")
    assert server.status_code == 503 and server.json()["ready"] is False
    assert "weights missing" in server.json()["models"]["tiny/1.0"]


def test_inference_auth_guards_v2_but_not_the_probes(router: LocalRouter, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    router.down.clear()
    client = TestClient(inference_app(router, IngressArgs(access_log="off"), token=TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready"):
        assert_oip_error(client.get(path), 401, "token")
        assert client.get(path, headers=auth).status_code == 200
    assert_oip_error(client.post("/v2/models/scorer/infer", json={}), 401, "token")
    assert client.get("/v2/health/live").status_code == 200
    router.down["tiny"] = "weights missing"
    anonymous = client.get("/v2/health/ready")
    assert anonymous.status_code == 503 and anonymous.json() == {"ready": False}  # no model named
    assert "tiny/1.0" in client.get("/v2/health/ready", headers=auth).json()["models"]
    router.down.clear()


# -- OIP v2: inference ---------------------------------------------------------------------------
def test_v2_infer_bytes_inputs_answers_json_strings(client: TestClient, cat_png: bytes) -> None:
    request = {
        "id": "req-1",
        "inputs": [{"name": "data", "shape": [2], "datatype": "BYTES", "data": [b64(cat_png), b64(cat_png)]}],
    }
    response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1.0" and body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["name"] == "output-0" and output["datatype"] == "BYTES" and output["shape"] == [2]
    # Each element is a string holding the JSON answer, as standard decoders expect.
    assert all(isinstance(s, str) for s in output["data"])
    assert json.loads(output["data"][0]) == client.post("/predictions/tiny", content=cat_png).json()
    assert client.post("/v2/models/tiny/versions/1.0/infer", json=request).status_code == 200


def test_v2_bytes_inputs_with_requested_outputs(client: TestClient, cat_png: bytes) -> None:
    """The requested outputs are checked against the declared ones before the run and select
    the answer after it (a name shadowed between the two once made this a 500)."""
    request = {
        "inputs": [{"name": "data", "shape": [1], "datatype": "BYTES", "data": [b64(cat_png)]}],
        "outputs": [{"name": "output-0"}],
    }
    response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "output-0" and output["shape"] == [1]


def test_v2_infer_every_numeric_datatype_as_json(client: TestClient) -> None:
    request = echo_request()
    response = client.post("/v2/models/echo/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "echo-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    for sent in request["inputs"]:
        got = outputs[sent["name"].replace("in_", "out_")]
        assert got["datatype"] == sent["datatype"] and got["shape"] == [2, 3]
        expected = [v for row in sent["data"] for v in row]
        if sent["datatype"] == "BF16":  # rounded to BF16's 8-bit mantissa
            expected = bf16_values(bf16_bits(np.array(expected, np.float32))).tolist()
        assert got["data"] == expected, sent["datatype"]


def test_v2_binary_data_extension_both_ways(client: TestClient) -> None:
    features = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/scorer/infer",
        content=header + features.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:size])
    (output,) = document["outputs"]
    assert output["parameters"] == {"binary_data_size": 16} and "data" not in output
    scores = np.frombuffer(response.content[size:], np.float32).reshape(2, 2)
    assert scores.tolist() == expected_scores(features.tolist())


def test_v2_bytes_as_binary_and_text(client: TestClient, cat_png: bytes) -> None:
    raw = struct.pack("<I", len(cat_png)) + cat_png
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "data",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = client.post(
        "/v2/models/tiny/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["inference-header-content-length"])
    (length,) = struct.unpack_from("<I", response.content, size)
    answer = json.loads(response.content[size + 4 : size + 4 + length])
    assert answer == client.post("/predictions/tiny", content=cat_png).json()
    # Plain text in JSON with content_type "str" reaches the model as UTF-8 (not an image: 400).
    text = {
        "inputs": [
            {
                "name": "t",
                "shape": [1],
                "datatype": "BYTES",
                "data": ["hi"],
                "parameters": {"content_type": "str"},
            }
        ]
    }
    assert_oip_error(client.post("/v2/models/tiny/infer", json=text), 400, "inputs[0]")


def test_v2_outputs_select_and_unknown_output_is_400(client: TestClient) -> None:
    request = {**echo_request(), "outputs": [{"name": "out_int8"}, {"name": "out_bool"}]}
    body = client.post("/v2/models/echo/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["out_int8", "out_bool"]
    request["outputs"] = [{"name": "nope"}]
    assert_oip_error(client.post("/v2/models/echo/infer", json=request), 400, "unknown output nope")


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        (
            {"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [0.0] * 6}]},
            "shape [2, 3]",
        ),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64", "data": [0.0] * 4}]}, "FP64"),
        (
            {"inputs": [{"name": "feats", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]},
            "missing features",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 3}]},
            "3 elements",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4}]},
            "numbers",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT4", "data": [0] * 4}]},
            "datatype",
        ),
        ({"inputs": [{"name": "features", "shape": [0, 4], "datatype": "FP32", "data": []}]}, "no rows"),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32"}]}, "neither data"),
    ],
)
def test_bad_tensors_are_400_in_oip_shape(client: TestClient, request_body: dict, fragment: str) -> None:
    assert_oip_error(client.post("/v2/models/scorer/infer", json=request_body), 400, fragment)


def test_integers_out_of_range_are_refused_not_wrapped(client: TestClient) -> None:
    request = echo_request()
    request["inputs"][2]["data"] = [[300, 0, 0], [0, 0, 0]]  # INT8
    assert_oip_error(client.post("/v2/models/echo/infer", json=request), 400, "[-128, 127]")


def test_numeric_tensors_to_an_image_model_are_400(client: TestClient) -> None:
    request = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert_oip_error(client.post("/v2/models/tiny/infer", json=request), 400, "BYTES")


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        (b'{"inputs": [', {}, "Invalid JSON body"),
        (b'{"inputs": []}', {}, "non-empty list"),
        (
            b'{"inputs": [{"name": "d", "datatype": "BYTES", "shape": [3], "data": ["aGk="]}]}',
            {},
            "1 elements",
        ),
        (b'{"inputs": [{"name": "d", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}', {}, "base64"),
        (b'{"id": 7, "inputs": [{}]}', {}, "'id' must be a string"),
        (b'{"inputs": []}xx', {"Inference-Header-Content-Length": "99"}, "Inference-Header-Content-Length"),
        (
            b'{"inputs": [{"name": "d", "datatype": "BYTES", "shape": [1], '
            b'"parameters": {"binary_data_size": 9}}]}',
            {},
            "runs past",
        ),
    ],
)
def test_malformed_v2_requests_are_400_naming_the_problem(
    client: TestClient, body: bytes, headers: dict, fragment: str
) -> None:
    response = client.post(
        "/v2/models/tiny/infer", content=body, headers={"content-type": "application/json", **headers}
    )
    assert_oip_error(response, 400, fragment)


def test_v1_and_v2_predictions_are_counted_with_model_version_and_protocol(
    client: TestClient, cat_png: bytes
) -> None:
    client.post("/v1/models/tiny:predict", json={"instances": [{"b64": b64(cat_png)}]})
    client.post(
        "/v2/models/scorer/infer",
        json={"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
    )
    metrics = client.get("/metrics").text
    assert (
        'raytorch_requests_total{code="200",model_name="tiny",model_version="1.0",protocol="kserve_v1"} 1.0'
        in metrics
    )
    assert (
        'raytorch_requests_total{code="200",model_name="scorer",model_version="1.0",protocol="oip_v2"} 1.0'
        in metrics
    )


# -- limits and names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("/v1/models/tiny:predict", b"{not json", "Invalid JSON body"),
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
        ("/v1/models/tiny:predict", b'{"instances": [{"b64": "aGVsbG8="}]}', "instances[0]: Request body"),
    ],
)
def test_bad_v1_requests_are_400_naming_the_problem(
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
    huge_v2 = b'{"inputs": [{"data": ["' + b"a" * LIMIT + b'"]}]}'
    assert_oip_error(client.post("/v2/models/tiny/infer", content=huge_v2), 413, "limit")


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
    assert response.status_code == 400, response.text
    assert len(response.text) < 400 and "model" in response.text.lower()


def test_api_description_lists_the_v1_and_v2_routes(client: TestClient) -> None:
    paths = client.get("/api-description").json()["paths"]
    for path in (
        "/v1/models/{model_name}:explain",
        "/v2",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ):
        assert path in paths, path


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v2/models/tiny/infer"])
def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient, path: str) -> None:
    deep = b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = client.post(path, content=deep)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.text
