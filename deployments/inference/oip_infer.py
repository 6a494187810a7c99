"""An Open Inference Protocol inference, whatever it came over (REST or gRPC).

The transports parse their wire format into an :class:`InferRequest` and encode the
:class:`InferResult`; this module decides how the request reaches the model, through the one
fan-out every protocol uses (:meth:`Predictor.predict`):

- every input ``BYTES`` (encoded media for a handler that decodes it): each element is one
  prediction, so the elements of one request may share a batch; the answer is one ``BYTES``
  output with one JSON document (or the handler's own bytes) per element;
- numeric tensors: the request's tensors go to the model's ``tensor`` handler as they are,
  checked there against the declared inputs and batched along dimension 0; the answer is the
  model's declared outputs.

Requested outputs select and order the answer; an unknown output name is a 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from deployments.common.model_table import ModelVersionState
from deployments.inference.predictions import MAX_INPUTS, Predictor
from deployments.inference.request_body import RequestInput
from deployments.inference.telemetry import RequestRecord
from handlers.errors import BadInputError, InferenceError
from handlers.tensor_data import BYTES, Tensor, TensorRequest


class Signatures(Protocol):
    """Where a model version's declared inputs and outputs come from (the router)."""

    async def signature(
        self, model: str, version: str | None
    ) -> tuple[ModelVersionState, dict[str, Any]]: ...


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` is the REST binary-data choice (None: the
    request's default)."""

    name: str
    binary: bool | None = None


@dataclass
class InferRequest:
    """What every transport's inference request becomes."""

    inputs: list[Tensor]
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_outputs: bool = False


@dataclass
class InferResult:
    """The answer, before the transport encodes it; ``binary[i]`` says how to send output i."""

    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    binary: list[bool]


def as_bytes(result: Any) -> bytes:
    """A handler's answer as one BYTES element: its own bytes, else a JSON document."""
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    return json.dumps(result).encode()


async def infer(
    predictor: Predictor,
    signatures: Signatures,
    record: RequestRecord,
    model: str,
    version: str | None,
    request: InferRequest,
) -> InferResult:
    """Run ``request`` on ``model`` (the default version when ``version`` is None)."""
    if not request.inputs:
        raise BadInputError("'inputs' must hold at least one tensor")
    if all(t.datatype == BYTES for t in request.inputs):
        elements = [element for tensor in request.inputs for element in tensor.data]
        if not elements:
            raise BadInputError("the BYTES inputs hold no element")
        if len(elements) > MAX_INPUTS:
            raise BadInputError(
                f"the BYTES inputs hold {len(elements)} elements; at most {MAX_INPUTS} per request"
            )
        inputs = [RequestInput(element, None) for element in elements]
        answers = await predictor.predict(record, model, version, inputs, where="inputs")
        _, signature = await signatures.signature(model, answers[0].version)
        name = signature["outputs"][0]["name"]
        outputs = [Tensor(name, BYTES, (len(answers),), [as_bytes(a.result) for a in answers])]
    else:
        tensors = RequestInput(TensorRequest(tuple(request.inputs)), None)
        answers = await predictor.predict(record, model, version, [tensors])
        outputs = answers[0].result
        if not isinstance(outputs, list) or not all(isinstance(t, Tensor) for t in outputs):
            raise InferenceError(f"Model {model} answered numeric tensors with something else than tensors")
    chosen = _select(outputs, request.outputs)
    binary = [_binary(request, t.name) for t in chosen]
    return InferResult(model, answers[0].version, request.id, chosen, binary)


def _select(outputs: list[Tensor], requested: list[RequestedOutput]) -> list[Tensor]:
    if not requested:
        return outputs
    by_name = {t.name: t for t in outputs}
    unknown = [r.name for r in requested if r.name not in by_name]
    if unknown:
        raise BadInputError(
            f"unknown output {', '.join(unknown)}: the model's outputs are {', '.join(by_name)}"
        )
    return [by_name[r.name] for r in requested]


def _binary(request: InferRequest, name: str) -> bool:
    for wanted in request.outputs:
        if wanted.name == name and wanted.binary is not None:
            return wanted.binary
    return request.binary_outputs
