"""Tensor elements between JSON and raw bytes, with the checks OIP leaves to the server.

JSON carries numbers, booleans and strings; a tensor's raw form is little-endian, row-major
elements (BF16 as the upper half of an FP32). Values that do not fit the declared datatype
(a float for INT32, 300 for INT8, a string for FP32, ragged nesting) are refused with a 400
naming where they were, never silently truncated or wrapped. numpy only; no torch, no Ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handlers.errors import BadInputError
from handlers.tensor_data import BYTES, ELEMENT_SIZE

NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # the bits: numpy has no bfloat16
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_FLOATS = ("FP16", "BF16", "FP32", "FP64")


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """FP32 values as BF16 bit patterns, rounded to nearest even (NaN stays NaN)."""
    bits = values.astype("<f4").view("<u4")
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return np.where(np.isnan(values), 0x7FC0, rounded).astype("<u2")


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns as FP32 values (exact)."""
    return (bits.astype("<u4") << 16).view("<f4")


def json_to_array(values: Any, datatype: str, where: str) -> np.ndarray:
    """Nested (or flat) JSON values as an array of ``datatype`` (BF16 as bits); 400 when they
    do not fit it."""
    if datatype == BYTES or datatype not in NUMPY_DTYPES:
        raise BadInputError(f"{where}: datatype {datatype!r} has no numeric JSON form")
    try:
        probe = np.asarray(values)
    except (ValueError, TypeError):
        raise BadInputError(f"{where}: data is ragged (rows of different lengths)") from None
    kind = probe.dtype.kind
    if probe.size == 0:
        return np.zeros(probe.shape, NUMPY_DTYPES[datatype])
    if datatype == "BOOL":
        if kind != "b":
            raise BadInputError(f"{where}: BOOL data must be true/false, got {_kind_name(kind)}")
        return probe
    if datatype in _FLOATS:
        if kind not in "iuf":
            raise BadInputError(f"{where}: {datatype} data must be numbers, got {_kind_name(kind)}")
        if datatype == "BF16":
            return bf16_bits(probe.astype("<f4"))
        return probe.astype(NUMPY_DTYPES[datatype])
    if kind not in "iu":
        raise BadInputError(f"{where}: {datatype} data must be integers, got {_kind_name(kind)}")
    limits = np.iinfo(NUMPY_DTYPES[datatype])
    low, high = probe.min(), probe.max()
    if low < limits.min or high > limits.max:
        raise BadInputError(
            f"{where}: {datatype} values must lie in [{limits.min}, {limits.max}], got {low}..{high}"
        )
    return probe.astype(NUMPY_DTYPES[datatype])


def array_to_json(array: np.ndarray, datatype: str) -> list:
    """A numeric array's elements as a flat JSON list (BF16 bits become numbers)."""
    flat = array.reshape(-1)
    if datatype == "BF16":
        flat = bf16_values(flat)
    return flat.tolist()


def raw_to_array(raw: bytes, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Raw little-endian elements as an array of ``shape``; 400 when the size is wrong."""
    expected = int(np.prod(shape, dtype=np.int64)) * ELEMENT_SIZE[datatype]
    if len(raw) != expected:
        raise BadInputError(
            f"{where}: {len(raw)} bytes of data, but a {datatype} tensor of shape "
            f"{list(shape)} takes {expected}"
        )
    return np.frombuffer(raw, NUMPY_DTYPES[datatype]).reshape(shape)


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}.get(
        kind, "mixed or nested values"
    )
