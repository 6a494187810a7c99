"""The Open Inference Protocol's REST wire format (JSON plus the binary data extension), the
gRPC status mapping and TorchServe's gRPC management calls as REST requests; no Ray."""

from __future__ import annotations

import json
import re
import struct

import pytest

from deployments.common.forwarding import ManagementCall
from deployments.common.http_errors import grpc_code_name
from deployments.inference.oip_codec import encode_result, parse_request
from deployments.inference.oip_infer import InferResult
from deployments.management.grpc_calls import as_http
from handlers import errors
from handlers.errors import BadInputError
from handlers.tensor_data import Tensor


def test_json_and_binary_inputs_mix_in_order() -> None:
    header = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [[1.5, 2]]},
                {"name": "c", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}},
            ],
            "outputs": [{"name": "x", "parameters": {"binary_data": True}}, {"name": "y"}],
        }
    ).encode()
    tail = struct.pack("<2i", 3, -4) + struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)
    request = parse_request(header + tail, str(len(header)))
    a, b, c = request.inputs
    assert (a.shape, a.data) == ((2,), struct.pack("<2i", 3, -4))
    assert (b.shape, b.data) == ((1, 2), struct.pack("<2f", 1.5, 2.0))
    assert c.data == [b"abc", b""]
    assert request.id == "7" and [(o.name, o.binary) for o in request.outputs] == [("x", True), ("y", None)]


@pytest.mark.parametrize(
    ("tail", "fragment"),
    [
        (struct.pack("<I", 9) + b"abc", "runs past the data's end"),
        (b"\x01\x00", "2 bytes of data hold at most 0 BYTES elements"),
        (
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b",
            "the data holds more elements than shape [1] holds",
        ),
    ],
)
def test_broken_binary_bytes_are_400(tail: bytes, fragment: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "c",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tail)},
                }
            ]
        }
    ).encode()
    with pytest.raises(BadInputError, match=re.escape(fragment)):
        parse_request(header + tail, str(len(header)))


def test_bytes_left_over_after_the_binary_inputs_are_400() -> None:
    header = json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "data": [1]}]}).encode()
    with pytest.raises(BadInputError, match="3 bytes of binary data follow"):
        parse_request(header + b"xyz", str(len(header)))


def test_outputs_encode_as_json_or_binary() -> None:
    outputs = [
        Tensor("f", "FP16", (2,), struct.pack("<2e", 0.5, -1.0)),
        Tensor("s", "BYTES", (2,), [b'{"a": 1}', b"\xff\xd8 not utf-8"]),
        Tensor("b", "BF16", (1,), struct.pack("<H", 0x3FC0)),
    ]
    body, headers = encode_result(InferResult("m", "1.0", "", outputs, [False, False, False]))
    document = json.loads(body)
    assert headers == {"content-type": "application/json"} and "id" not in document
    f, s, b = document["outputs"]
    assert f["data"] == [0.5, -1.0] and b["data"] == [1.5]
    assert s["parameters"] == {"content_type": "base64"} and s["data"][1] == "/9ggbm90IHV0Zi04"
    body, headers = encode_result(InferResult("m", "1.0", "r", outputs[:2], [True, False]))
    size = int(headers["inference-header-content-length"])
    head = json.loads(body[:size])
    assert head["id"] == "r" and head["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert body[size:] == struct.pack("<2e", 0.5, -1.0)


def test_every_error_maps_to_one_grpc_code() -> None:
    expected = {
        errors.BadInputError: "INVALID_ARGUMENT",
        errors.UnsupportedMediaTypeError: "INVALID_ARGUMENT",
        errors.UnauthorizedError: "UNAUTHENTICATED",
        errors.ModelNotFoundError: "NOT_FOUND",
        errors.ConflictError: "ALREADY_EXISTS",
        errors.PayloadTooLargeError: "RESOURCE_EXHAUSTED",
        errors.ModelNotReadyError: "UNAVAILABLE",
        errors.RequestTimeoutError: "DEADLINE_EXCEEDED",
        errors.NotImplementedFeatureError: "UNIMPLEMENTED",
        errors.InferenceError: "INTERNAL",
        errors.RaytorchError: "INTERNAL",
    }
    for cls, code in expected.items():
        assert grpc_code_name(cls("x")) == code, cls


REGISTER = {"url": "m.mar", "batch_size": 4, "initial_workers": 0, "runtime": "", "startup_timeout": 0}
REGISTER_ALL = {"url": "m.mar", "runtime": "python4", "startup_timeout": 30, "synchronous": True}
SCALE = {"model_name": "m", "model_version": "2.0", "min_worker": 2, "synchronous": True}
M2 = {"model_name": "m", "model_version": "2.0"}


@pytest.mark.parametrize(
    ("call", "method", "path", "query"),
    [
        (
            ManagementCall("RegisterModel", REGISTER),
            "POST",
            "/models",
            "url=m.mar&batch_size=4&synchronous=false",
        ),
        (
            ManagementCall("ListModels", {"limit": 0, "next_page_token": 2}),
            "GET",
            "/models",
            "next_page_token=2",
        ),
        (
            ManagementCall("RegisterModel", REGISTER_ALL),
            "POST",
            "/models",
            "url=m.mar&runtime=python4&startup_timeout=30&synchronous=true",
        ),
        (ManagementCall("DescribeModel", {"model_name": "m", "model_version": ""}), "GET", "/models/m", ""),
        (
            ManagementCall("DescribeModel", {"model_name": "m", "customized": True}),
            "GET",
            "/models/m",
            "customized=true",
        ),
        (ManagementCall("ScaleWorker", SCALE), "PUT", "/models/m/2.0", "min_worker=2&synchronous=true"),
        (ManagementCall("SetDefault", M2), "PUT", "/models/m/2.0/set-default", ""),
        (ManagementCall("UnregisterModel", {"model_name": "a/b"}), "DELETE", "/models/a%2Fb", ""),
    ],
)
def test_grpc_management_calls_become_the_rest_requests(
    call: ManagementCall, method: str, path: str, query: str
) -> None:
    request = as_http(ManagementCall(call.rpc, call.fields, "Bearer t"))
    assert (request.method, request.path, request.query_string.decode()) == (method, path, query)
    assert request.headers == [(b"authorization", b"Bearer t")]


def test_grpc_management_calls_missing_names_are_400() -> None:
    with pytest.raises(BadInputError, match="model_name is required"):
        as_http(ManagementCall("DescribeModel", {"model_name": ""}))
    with pytest.raises(BadInputError, match="model_version is required"):
        as_http(ManagementCall("SetDefault", {"model_name": "m"}))


def test_torchserve_grpc_predictions_carry_text_and_bytes_as_they_are() -> None:
    from deployments.inference.grpc_torchserve import prediction_bytes

    assert prediction_bytes("7") == b"7"  # as over REST, not the JSON string '"7"'
    assert prediction_bytes(b"\x00\x01") == b"\x00\x01"
    assert prediction_bytes({"cat": 0.9}) == b'{"cat": 0.9}'
