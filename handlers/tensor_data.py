"""Tensors as plain data: what the Open Inference Protocol routes and the ``tensor`` handler
exchange, and how a model declares its inputs and outputs.

A :class:`Tensor` holds its elements as raw little-endian, row-major bytes (OIP's binary
layout; BF16 as the upper 16 bits of an FP32), or as a list of byte strings for ``BYTES``. It
pickles cheaply across a Ray handle and needs neither torch nor numpy. No Ray here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from handlers.spec import StrictModel

# Element sizes in bytes of the numeric datatypes of the OIP specification (plus BF16).
ELEMENT_SIZE = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
}
BYTES = "BYTES"
DATATYPES = (*ELEMENT_SIZE, BYTES)
# What the tensor handler feeds a torch model (torch has no usable unsigned 16-64 bit types).
ModelDatatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64"]
TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}$"


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)


@dataclass(frozen=True)
class Tensor:
    """One named tensor: ``data`` is raw bytes (numeric) or one byte string per element (BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | list[bytes]

    @property
    def rows(self) -> int:
        """Size of the first (batch) dimension."""
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True)
class TensorRequest:
    """The input tensors of one inference request, sent to a model replica as they are."""

    inputs: tuple[Tensor, ...]


class TensorSpec(StrictModel):
    """A model input or output as OIP metadata describes it."""

    name: str = Field(..., pattern=TENSOR_NAME_PATTERN, description="Tensor name, as clients send it.")
    datatype: ModelDatatype = Field(..., description="OIP datatype of the elements, e.g. FP32.")
    shape: list[int] = Field(
        ...,
        min_length=1,
        max_length=8,
        description=(
            "Full shape, batch first: the first dimension is the batch and must be -1; "
            "-1 elsewhere means any size."
        ),
    )

    @field_validator("shape")
    @classmethod
    def _batched(cls, shape: list[int]) -> list[int]:
        if shape[0] != -1:
            raise ValueError("the first dimension is the batch: it must be -1")
        if any(d == 0 or d < -1 for d in shape[1:]):
            raise ValueError("dimensions are -1 (any size) or positive")
        return shape

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """True when ``shape`` fits this spec (same rank, fixed dimensions equal)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class TensorSignature(StrictModel):
    """A model's declared inputs and outputs (the ``tensor`` handler's options)."""

    inputs: list[TensorSpec] = Field(..., min_length=1, max_length=32, description="Inputs, in call order.")
    outputs: list[TensorSpec] = Field(
        ..., min_length=1, max_length=32, description="Outputs, in the order the model returns them."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> TensorSignature:
        for side in ("inputs", "outputs"):
            names = [t.name for t in getattr(self, side)]
            if len(set(names)) != len(names):
                raise ValueError(f"{side} names must be unique, got {names}")
        return self


def describe_shape(shape: list[int] | tuple[int, ...]) -> str:
    """``[-1, 3, 224, 224]`` as users read it in error messages."""
    return "[" + ", ".join(str(d) for d in shape) + "]"
