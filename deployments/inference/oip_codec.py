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
import math
import struct
import sys
from typing import Any

import numpy as np

from deployments.inference.oip_infer import (
    InferRequest,
    InferResult,
    RequestedOutput,
    check_media_elements,
    checked_outputs,
)
from handlers.errors import BadInputError
from handlers.tensor_data import BYTES, DATATYPES, Tensor, element_count
from handlers.tensor_json import NUMPY_DTYPES, array_to_json, json_to_array, raw_to_array

HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")
# A shape's dimensions and the product of its non-zero ones: far above any tensor a request
# body can hold (the product must match the data), low enough that numpy and torch never
# overflow on a shape that passed (a zero dimension makes no data, but numpy still multiplies
# the others).
MAX_RANK = 32
MAX_SHAPE_ELEMENTS = 2**40


def checked_shape(shape: list[int] | tuple[int, ...], where: str) -> tuple[int, ...]:
    """``shape`` when it can be a tensor's; 400 naming the limit it breaks."""
    if len(shape) > MAX_RANK:
        raise BadInputError(f"{where}.shape has {len(shape)} dimensions; at most {MAX_RANK}")
    if math.prod(d for d in shape if d) > MAX_SHAPE_ELEMENTS:
        raise BadInputError(
            f"{where}.shape {str(list(shape))[:80]} is impossible: its non-zero dimensions multiply "
            f"to more than {MAX_SHAPE_ELEMENTS} elements"
        )
    return tuple(shape)


def split_bytes_elements(raw: bytes, where: str, shape: tuple[int, ...] | None = None) -> list[bytes]:
    """BYTES elements from their binary form: each a 4-byte little-endian length, then the bytes.

    With the tensor's ``shape``, a count the data cannot hold is refused before looping, and
    the loop stops at the first element too many: the work is bounded by the shape, however
    many (empty) elements the body packs.
    """
    expected = None if shape is None else element_count(shape)
    if expected is not None and expected > len(raw) // 4:
        raise BadInputError(
            f"{where}: {len(raw)} bytes of data hold at most {len(raw) // 4} BYTES elements "
            f"(a 4-byte length each), but shape {list(shape or ())} holds {expected}"
        )
    elements, offset = [], 0
    while offset < len(raw):
        if len(elements) == expected:
            raise BadInputError(f"{where}: the data holds more elements than shape {list(shape or ())} holds")
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
        elements = split_bytes_elements(raw, where, shape)
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
    # A loop, not recursion: nesting as deep as the JSON parser allows must not overflow here.
    if not isinstance(values, list):
        return [values]
    leaves: list = []
    stack = [iter(values)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            leaves.append(value)
        else:
            stack.pop()
    return leaves


def _bytes_from_json(values: Any, codec: str, shape: tuple[int, ...], where: str) -> list[bytes]:
    if isinstance(values, list) and len(values) > element_count(shape):  # before any per-element work
        _check_count(len(values), shape, where)
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
    return checked_shape(value, where)


def _header_length(value: str, body: bytes) -> int:
    # isdigit() alone lets "²" and other Unicode digits through to int(), which refuses them.
    if value.isascii() and value.isdigit() and len(value) <= 12 and 0 < int(value) <= len(body):
        return int(value)
    raise BadInputError(
        f"Inference-Header-Content-Length {value[:20]!r} is not a length within the {len(body)}-byte body"
    )


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request from its REST body; 400 naming what is wrong."""
    binary = b""
    if header_length is not None:
        length = _header_length(header_length, body)
        body, binary = body[:length], body[length:]
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
    except ValueError:  # not a JSONDecodeError: Python's limit on the digits of an integer
        raise BadInputError(
            f"Invalid JSON body: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if not isinstance(document, dict):
        raise BadInputError(f"JSON body must be an object, not {type(document).__name__}")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadInputError("'inputs' must be a non-empty list of tensors")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise BadInputError("'id' must be a string")
    check_media_elements([_declared(tensor) for tensor in inputs])
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
        tensors, request_id, checked_outputs([_output(o, f"outputs[{i}]") for i, o in enumerate(outputs)]),
        bool(parameters.get("binary_data_output", False)),
    )  # fmt: skip


def _declared(tensor: Any) -> tuple[Any, tuple[int, ...]]:
    """An input's datatype and shape, read before its data (None when malformed: _input says why)."""
    shape = tensor.get("shape") if isinstance(tensor, dict) else None
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None, ()
    return tensor.get("datatype"), tuple(shape)


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
        elements = _bytes_from_json(tensor["data"], parameters.get("content_type", "base64"), shape, where)
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
