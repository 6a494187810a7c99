"""What a hostile Open Inference request costs the ingress: refused with a 400 naming the
problem before any work proportional to what it claims (issue 24, findings 1, 7 and 16); no Ray."""

from __future__ import annotations

import json
import struct
import time

import pytest

from deployments.inference.grpc_oip import request_from_proto
from deployments.inference.oip_codec import parse_request
from deployments.protos import OIP_SERVICE, service_methods
from handlers.errors import BadInputError


def bytes_input(shape: list[int], size: int) -> dict:
    return {"name": "d", "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": size}}


def binary_request(inputs: list[dict], tail: bytes, **extra: object) -> tuple[bytes, str]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + tail, str(len(header))


def test_duplicate_requested_outputs_are_400_naming_them() -> None:
    outputs = [{"name": "output-0"}] * 50_000 + [{"name": "b"}, {"name": "b"}]
    body = json.dumps(
        {"inputs": [{"name": "d", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], "outputs": outputs}
    ).encode()
    with pytest.raises(BadInputError, match=r"more than once: output-0, b$"):
        parse_request(body, None)


def test_grpc_duplicate_requested_outputs_are_400() -> None:
    message = service_methods(OIP_SERVICE)["ModelInfer"].request(model_name="m")
    tensor = message.inputs.add(name="d", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"x")
    for _ in range(3):
        message.outputs.add(name="output-0")
    with pytest.raises(BadInputError, match="more than once: output-0"):
        request_from_proto(message)


def test_zero_length_bytes_elements_past_the_shape_stop_at_once() -> None:
    tail = b"\0\0\0\0" * (5 * 2**20)  # 20 MiB of empty elements, for a shape of one
    body, length = binary_request([bytes_input([1], len(tail))], tail)
    started = time.perf_counter()
    with pytest.raises(BadInputError, match="more elements than shape \\[1\\] holds"):
        parse_request(body, length)
    assert time.perf_counter() - started < 0.5  # the loop stopped at the second element


def test_a_bytes_shape_the_data_cannot_hold_is_400_before_splitting() -> None:
    tail = b"\0\0\0\0" * 10
    body, length = binary_request([bytes_input([60], len(tail))], tail)
    with pytest.raises(BadInputError, match="40 bytes of data hold at most 10"):
        parse_request(body, length)


def test_bytes_inputs_over_the_per_request_limit_are_400_before_splitting() -> None:
    tail = b"\0\0\0\0" * 5000
    body, length = binary_request([bytes_input([5000], len(tail))], tail)
    with pytest.raises(BadInputError, match="5000 elements; at most 64 per request"):
        parse_request(body, length)


@pytest.mark.parametrize("value", ["²", "١٢", "1" * 5000, "-1", "0"])
def test_header_lengths_that_are_not_plain_digits_are_400(value: str) -> None:
    with pytest.raises(BadInputError, match="Inference-Header-Content-Length"):
        parse_request(b'{"inputs": []}', value)


@pytest.mark.parametrize(
    ("shape", "tail"),
    [([2**32, 2**32], b""), ([0, 2**62], b""), ([2**63], b""), ([1] * 100, b"\0" * 4)],
    ids=["product-overflows-int64", "zero-times-huge", "dimension-over-int64", "rank-100"],
)
def test_impossible_shapes_are_400(shape: list[int], tail: bytes) -> None:
    tensor = {"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": len(tail)}}
    body, length = binary_request([tensor], tail)
    with pytest.raises(BadInputError, match="shape"):
        parse_request(body, length)


def test_grpc_shape_whose_product_overflows_is_400() -> None:
    message = service_methods(OIP_SERVICE)["ModelInfer"].request(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[2**32, 2**32])
    message.raw_input_contents.append(b"")
    with pytest.raises(BadInputError, match="shape"):
        request_from_proto(message)


def test_a_5000_digit_integer_in_a_shape_is_400() -> None:
    shape = "[" + "9" * 5000 + "]"
    body = ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": ' + shape + ', "data": [1]}]}').encode()
    with pytest.raises(BadInputError, match="digits"):
        parse_request(body, None)


def test_the_binary_extension_is_unchanged_for_well_formed_requests() -> None:
    tail = struct.pack("<I", 2) + b"hi"
    body, length = binary_request([bytes_input([1], len(tail))], tail, outputs=[{"name": "a"}, {"name": "b"}])
    request = parse_request(body, length)
    assert request.inputs[0].data == [b"hi"]
    assert [o.name for o in request.outputs] == ["a", "b"]
