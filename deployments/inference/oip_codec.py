"""The Open Inference Protocol's REST wire format, with the binary tensor data extension,
and the raw tensor form that gRPC's ``raw_input_contents`` shares with it.

A request is a JSON object, optionally followed by raw tensor data: then the
``Inference-Header-Content-Length`` header gives the JSON part's length and each input that
is binary says its size in ``parameters.binary_data_size`` (Triton's extension, what
tritonclient sends by default). Tensor data in JSON may be nested or flat; ``BYTES`` elements
in JSON are base64 strings, or plain UTF-8 text with the input parameter
``content_type: "str"``. Answers are JSON, with the outputs asked for as binary
(``binary_data`` per output, ``binary_data_output`` for all) appended after it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np

from deployments.inference.oip_infer import InferRequest, InferResult, RequestedOutput
from handlers.errors import BadInputError
from handlers.tensor_data import BYTES, DATATYPES, Tensor, element_count
from handlers.tensor_json import NUMPY_DTYPES, array_to_json, json_to_array, raw_to_array

HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")


def split_bytes_elements(raw: bytes, where: str) -> list[bytes]:
    """BYTES elements from their binary form: each a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadInputError(f"{where}: BYTES data ends inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadInputError(f"{where}: a BYTES element of {size} bytes runs past the data's end")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def join_bytes_elements(elements: list[bytes]) -> bytes:
    """The binary form of BYTES elements (inverse of :func:`split_bytes_elements`)."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def tensor_from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes, where: str) -> Tensor:
    """A tensor from its binary form, its size checked against its shape."""
    if datatype == BYTES:
        elements = split_bytes_elements(raw, where)
        _check_count(len(elements), shape, where)
        return Tensor(name, datatype, shape, elements)
    raw_to_array(raw, datatype, shape, where)  # size check
    return Tensor(name, datatype, shape, raw)


def tensor_to_raw(tensor: Tensor) -> bytes:
    """A tensor's binary form."""
    if isinstance(tensor.data, list):
        return join_bytes_elements(tensor.data)
    return tensor.data


def _check_count(count: int, shape: tuple[int, ...], where: str) -> None:
    if count != element_count(shape):
        raise BadInputError(
            f"{where}: {count} elements of data, but shape {list(shape)} holds {element_count(shape)}"
        )


def _flatten(values: Any) -> list:
    if not isinstance(values, list):
        return [values]
    return [leaf for value in values for leaf in _flatten(value)]


def _bytes_from_json(values: Any, codec: str, where: str) -> list[bytes]:
    elements = []
    for i, value in enumerate(_flatten(values)):
        if not isinstance(value, str):
            raise BadInputError(
                f"{where}.data[{i}]: BYTES elements in JSON are strings, not {type(value).__name__}"
            )
        if codec == "str":
            elements.append(value.encode())
            continue
        try:
            elements.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise BadInputError(
                f"{where}.data[{i}] is not valid base64 (send text with parameters "
                '{"content_type": "str"}, or the bytes as binary data)'
            ) from None
    return elements


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInputError(f"{where}.parameters must be an object")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadInputError(f"{where}.shape must be a list of non-negative integers")
    return tuple(value)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request from its REST body; 400 naming what is wrong."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise BadInputError(
                f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the "
                f"{len(body)}-byte body"
            )
        body, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise BadInputError("Invalid JSON body: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        hint = (
            "" if header_length else " (binary tensor data needs the Inference-Header-Content-Length header)"
        )
        raise BadInputError(
            f"Invalid JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}{hint}"
        ) from None
    except RecursionError:
        raise BadInputError("Invalid JSON body: nested too deeply") from None
    if not isinstance(document, dict):
        raise BadInputError(f"JSON body must be an object, not {type(document).__name__}")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadInputError("'inputs' must be a non-empty list of tensors")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise BadInputError("'id' must be a string")
    tensors, offset = [], 0
    for i, tensor in enumerate(inputs):
        parsed, offset = _input(tensor, f"inputs[{i}]", binary, offset)
        tensors.append(parsed)
    if offset != len(binary):
        raise BadInputError(f"{len(binary) - offset} bytes of binary data follow the last binary input")
    parameters = _parameters(document.get("parameters"), "request")
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadInputError("'outputs' must be a list")
    return InferRequest(
        tensors, request_id, [_output(o, f"outputs[{i}]") for i, o in enumerate(outputs)],
        bool(parameters.get("binary_data_output", False)),
    )  # fmt: skip


def _input(tensor: Any, where: str, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(tensor, dict):
        raise BadInputError(f"{where} must be an object with name, shape, datatype and data")
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise BadInputError(f"{where}.name must be a non-empty string")
    if datatype not in DATATYPES:
        raise BadInputError(f"{where}.datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = _shape(tensor.get("shape"), where)
    parameters = _parameters(tensor.get("parameters"), where)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise BadInputError(f"{where}.parameters.binary_data_size {size!r} runs past the binary data")
        return tensor_from_raw(name, datatype, shape, binary[offset : offset + size], where), offset + size
    if "data" not in tensor:
        raise BadInputError(f"{where} has neither data nor parameters.binary_data_size")
    if datatype == BYTES:
        elements = _bytes_from_json(tensor["data"], parameters.get("content_type", "base64"), where)
        _check_count(len(elements), shape, where)
        return Tensor(name, datatype, shape, elements), offset
    array = json_to_array(tensor["data"], datatype, f"{where}.data")
    _check_count(array.size, shape, where)
    return Tensor(name, datatype, shape, array.tobytes()), offset


def _output(value: Any, where: str) -> RequestedOutput:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise BadInputError(f"{where} must be an object with a name")
    binary = _parameters(value.get("parameters"), where).get("binary_data")
    return RequestedOutput(value["name"], None if binary is None else bool(binary))


def encode_result(result: InferResult) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Inference-Header-Content-Length`` when binary
    outputs follow the JSON)."""
    outputs, tails = [], []
    for tensor, binary in zip(result.outputs, result.binary, strict=True):
        output: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary:
            raw = tensor_to_raw(tensor)
            output["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        elif isinstance(tensor.data, list):
            try:
                output["data"] = [element.decode() for element in tensor.data]
            except UnicodeDecodeError:  # a handler's own bytes (an image, say): base64 in JSON
                output["data"] = [base64.b64encode(element).decode() for element in tensor.data]
                output["parameters"] = {"content_type": "base64"}
        else:
            array = np.frombuffer(tensor.data, NUMPY_DTYPES[tensor.datatype])
            output["data"] = array_to_json(array, tensor.datatype)
        outputs.append(output)
    document: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        document["id"] = result.id
    document["outputs"] = outputs
    header = json.dumps(document).encode()
    if not tails:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *tails]), headers
