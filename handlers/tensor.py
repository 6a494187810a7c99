"""The ``tensor`` default handler: numeric tensors in, numeric tensors out, no decoding.

For models that take tensors (embeddings, tabular models, anything whose client already holds
the numbers). The model's inputs and outputs are declared in ``options`` (names, OIP
datatypes, shapes with the batch first), and every request is checked against them before it
joins a batch: a missing or unknown input, a wrong datatype or shape is that request's own 400.
Requests are concatenated along dimension 0 (each may carry several rows) and the model is
called once per batch as ``model(*inputs)`` in declared order; it returns one tensor, a
tuple/list in declared output order, or a dict by output name. Requests whose variable
dimensions differ run as separate groups of the batch instead of failing it.

Inputs arrive as OIP tensors (:class:`handlers.tensor_data.TensorRequest`), or on TorchServe's
``/predictions`` and KServe v1 as JSON (``{"input": [[...]]}``, or the bare nested list for a
one-input model; one row without the batch dimension is a single instance) or a ``.npy`` file.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from handlers.base import BaseHandler
from handlers.errors import BadInputError, InferenceError
from handlers.tensor_data import Tensor, TensorRequest, TensorSignature, TensorSpec, describe_shape
from handlers.tensor_json import NUMPY_DTYPES, array_to_json, json_to_array, raw_to_array

TORCH_DTYPES = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class TensorItem:
    """One request's inputs, checked, in declared order. ``as_tensors``: answer with OIP
    tensors (else JSON lists); ``single``: the client sent one row without its batch dimension."""

    inputs: tuple[torch.Tensor, ...]
    rows: int
    as_tensors: bool
    single: bool = False

    def group_key(self) -> tuple:
        """Requests that can be concatenated share this key (all but the batch dimension)."""
        return tuple(tuple(t.shape[1:]) for t in self.inputs)


def to_torch(array: np.ndarray, datatype: str) -> torch.Tensor:
    """A (writable) numpy array of ``datatype`` as a torch tensor (BF16 arrays hold the bits)."""
    if datatype == "BF16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def to_tensor(spec: TensorSpec, value: torch.Tensor) -> Tensor:
    """A model output as a raw OIP tensor of its declared datatype."""
    value = value.detach().to("cpu", TORCH_DTYPES[spec.datatype]).contiguous()
    array = value.view(torch.int16).numpy() if spec.datatype == "BF16" else value.numpy()
    return Tensor(spec.name, spec.datatype, tuple(value.shape), array.tobytes())


class TensorHandler(BaseHandler):
    """Feeds declared tensors to the model; answers its declared outputs."""

    name = "tensor"
    Options = TensorSignature
    options: TensorSignature

    # -- per request ------------------------------------------------------------------------
    def preprocess_tensors(self, request: TensorRequest) -> TensorItem:
        sent = {t.name: t for t in request.inputs}
        self._check_names(list(sent))
        arrays = {}
        for spec in self.options.inputs:
            tensor = sent[spec.name]
            where = f"input {spec.name}"
            if tensor.datatype != spec.datatype:
                raise BadInputError(
                    f"{where}: datatype {tensor.datatype}, but the model takes {spec.datatype}"
                )
            if isinstance(tensor.data, list):
                raise BadInputError(f"{where}: datatype {tensor.datatype} needs numeric data")
            arrays[spec.name] = raw_to_array(tensor.data, tensor.datatype, tensor.shape, where).copy()
        return self._item(arrays, as_tensors=True)

    def preprocess(self, data: bytes, content_type: str | None = None) -> TensorItem:
        if data.startswith(NPY_MAGIC) or (content_type or "").lower().startswith("application/x-npy"):
            return self._item(self._from_npy(data), as_tensors=False)
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise BadInputError(
                f"Model {self.spec.name} takes tensors: send JSON ({{input name: nested list}}) or a "
                f".npy file, or use the Open Inference Protocol (/v2/models/{self.spec.name}/infer)"
            ) from None
        except ValueError:  # not a JSONDecodeError: Python's limit on the digits of an integer
            raise BadInputError(
                f"Invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
            ) from None
        if not isinstance(document, dict):
            if len(self.options.inputs) != 1:
                names = ", ".join(s.name for s in self.options.inputs)
                raise BadInputError(f"Model {self.spec.name} takes several inputs: send {{{names}}}")
            document = {self.options.inputs[0].name: document}
        self._check_names(list(document))
        arrays = {
            s.name: json_to_array(document[s.name], s.datatype, f"input {s.name}")
            for s in self.options.inputs
        }
        return self._item(arrays, as_tensors=False)

    def _from_npy(self, data: bytes) -> dict[str, np.ndarray]:
        if len(self.options.inputs) != 1:
            raise BadInputError(f"Model {self.spec.name} takes several inputs: a .npy file holds one")
        spec = self.options.inputs[0]
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BadInputError(f"Invalid .npy body: {exc}") from None
        if spec.datatype == "BF16" or array.dtype != NUMPY_DTYPES[spec.datatype]:
            raise BadInputError(
                f"input {spec.name}: .npy dtype {array.dtype}, but the model takes {spec.datatype}"
            )
        return {spec.name: np.array(array, copy=True)}

    def _check_names(self, sent: list[str]) -> None:
        declared = [s.name for s in self.options.inputs]
        missing = [n for n in declared if n not in sent]
        unknown = [n for n in sent if n not in declared]
        if missing or unknown:
            problem = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
            raise BadInputError(f"Model {self.spec.name} takes inputs {', '.join(declared)}: {problem}")

    def _item(self, arrays: dict[str, np.ndarray], as_tensors: bool) -> TensorItem:
        specs = self.options.inputs
        single = not as_tensors and all(arrays[s.name].ndim == len(s.shape) - 1 for s in specs)
        if single:
            arrays = {name: array[np.newaxis] for name, array in arrays.items()}
        for spec in specs:
            shape = arrays[spec.name].shape
            if not spec.accepts(shape):
                raise BadInputError(
                    f"input {spec.name}: shape {describe_shape(shape)} does not fit the model's "
                    f"{describe_shape(spec.shape)} (-1: any size; the first dimension is the batch)"
                )
        rows = {arrays[s.name].shape[0] for s in specs}
        if len(rows) != 1:
            raise BadInputError(f"inputs disagree on the batch size (first dimension): {sorted(rows)}")
        count = rows.pop()
        if count == 0:
            raise BadInputError("inputs hold no rows (the first dimension is 0)")
        inputs = tuple(to_torch(arrays[s.name], s.datatype) for s in specs)
        return TensorItem(inputs, count, as_tensors, single)

    def example_input(self) -> TensorItem:
        arrays = {
            s.name: np.zeros([1 if d == -1 else d for d in s.shape], NUMPY_DTYPES[s.datatype])
            for s in self.options.inputs
        }
        return self._item(arrays, as_tensors=True)

    # -- per batch --------------------------------------------------------------------------
    def collate(self, items: list[TensorItem]) -> list[tuple[list[int], tuple[torch.Tensor, ...]]]:
        """Groups of items with equal non-batch shapes: (item indices, concatenated inputs)."""
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.group_key(), []).append(index)
        return [
            (
                members,
                tuple(
                    torch.cat([items[i].inputs[k] for i in members]) for k in range(len(self.options.inputs))
                ),
            )
            for members in groups.values()
        ]

    def inference(
        self, batch: list[tuple[list[int], tuple[torch.Tensor, ...]]]
    ) -> list[tuple[list[int], list[torch.Tensor]]]:
        assert self.model is not None, "load() must run before inference()"
        results = []
        with torch.inference_mode():
            for members, inputs in batch:
                output = self.model(*(t.to(self.device, non_blocking=True) for t in inputs))
                results.append((members, self._outputs(output, inputs[0].shape[0])))
        return results

    def _outputs(self, output: Any, rows: int) -> list[torch.Tensor]:
        specs = self.options.outputs
        if isinstance(output, dict):
            missing = [s.name for s in specs if s.name not in output]
            if missing:
                raise InferenceError(f"Model {self.spec.name} returned no output named {', '.join(missing)}")
            values = [output[s.name] for s in specs]
        else:
            values = list(output) if isinstance(output, tuple | list) else [output]
        if len(values) != len(specs):
            raise InferenceError(
                f"Model {self.spec.name} returned {len(values)} outputs; its options declare {len(specs)}"
            )
        for spec, value in zip(specs, values, strict=True):
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != rows:
                shape = (
                    describe_shape(tuple(value.shape))
                    if isinstance(value, torch.Tensor)
                    else type(value).__name__
                )
                raise InferenceError(
                    f"Model {self.spec.name} output {spec.name} is {shape}, not a tensor with one row "
                    f"per input row ({rows})"
                )
            if not spec.accepts(tuple(value.shape)):
                raise InferenceError(
                    f"Model {self.spec.name} output {spec.name} has shape "
                    f"{describe_shape(tuple(value.shape))}; its options declare {describe_shape(spec.shape)}"
                )
        return values

    def postprocess(
        self, output: list[tuple[list[int], list[torch.Tensor]]], items: list[TensorItem]
    ) -> list[Any]:
        results: list[Any] = [None] * len(items)
        for members, values in output:
            start = 0
            for index in members:
                item = items[index]
                rows = slice(start, start + item.rows)
                start += item.rows
                results[index] = self._answer(item, [v[rows] for v in values])
        return results

    def _answer(self, item: TensorItem, values: list[torch.Tensor]) -> Any:
        tensors = [to_tensor(spec, value) for spec, value in zip(self.options.outputs, values, strict=True)]
        if item.as_tensors:
            return tensors
        answer = {}
        for tensor in tensors:
            array = raw_to_array(tensor.data, tensor.datatype, tensor.shape, tensor.name)  # type: ignore[arg-type]
            nested = np.array(array_to_json(array, tensor.datatype), dtype=object).reshape(tensor.shape)
            answer[tensor.name] = (nested[0] if item.single else nested).tolist()
        return answer

    def signature(self) -> dict[str, Any]:
        base = super().signature()
        return {
            **base,
            "inputs": [s.model_dump() for s in self.options.inputs],
            "outputs": [s.model_dump() for s in self.options.outputs],
        }
