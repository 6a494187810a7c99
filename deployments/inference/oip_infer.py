"""An Open Inference Protocol inference, whatever it came over (REST or gRPC).

The transports parse their wire format into an :class:`InferRequest` and encode the
:class:`InferResult`; this module decides how the request reaches the model, through the one
fan-out every protocol uses (:meth:`DataPlane.infer`, :mod:`deployments.inference.data_plane`):

- every input ``BYTES`` (encoded media for a handler that decodes it): each element is one
  prediction, so the elements of one request may share a batch; the answer is one ``BYTES``
  output with one JSON document (or the handler's own bytes) per element;
- numeric tensors: the request's tensors go to the model's ``tensor`` handler as they are,
  checked there against the declared inputs and batched along dimension 0; the answer is the
  model's declared outputs.

Requested outputs select and order the answer; an unknown output name, or one asked for
twice, is a 400 (unknown names before the model runs).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.common.messages import Answer
from deployments.common.model_table import ModelVersionState
from deployments.inference.request_body import MAX_INPUTS, RequestInput
from deployments.inference.telemetry import RequestRecord
from handlers.errors import BadInputError, InferenceError
from handlers.tensor_data import BYTES, Tensor, TensorRequest, element_count

NAMES_SHOWN = 5  # names an error message lists before "and N more"


# The data plane's fan-out (record, model, version, inputs, where) and a version's declared
# inputs and outputs: what an Open Inference request runs on.
Infer = Callable[[RequestRecord, str, str | None, list[RequestInput], str | None], Awaitable[list[Answer]]]
Signature = Callable[[str, str | None], Awaitable[tuple[ModelVersionState, dict[str, Any]]]]


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


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown} and {len(names) - NAMES_SHOWN} more"


def checked_outputs(outputs: list[RequestedOutput]) -> list[RequestedOutput]:
    """The requested outputs, each named once; 400 naming the ones asked for twice (each would
    be answered again: a few KB of request could ask for gigabytes of answer)."""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for output in outputs:
        if output.name in seen:
            repeated[output.name] = None
        seen.add(output.name)
    if repeated:
        raise BadInputError(f"'outputs' names an output more than once: {_names(list(repeated))}")
    return outputs


def check_media_elements(declared: list[tuple[Any, tuple[int, ...]]]) -> None:
    """Refuse, from the inputs' declared (datatype, shape) alone, BYTES inputs holding more
    elements than a request may carry: before any element is split or decoded."""
    if declared and all(datatype == BYTES for datatype, _ in declared):
        total = sum(element_count(shape) for _, shape in declared)
        if total > MAX_INPUTS:
            raise BadInputError(f"the BYTES inputs hold {total} elements; at most {MAX_INPUTS} per request")


def as_bytes(result: Any) -> bytes:
    """A handler's answer as one BYTES element: its own bytes, else a JSON document."""
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    return json.dumps(result).encode()


async def infer_tensors(
    infer: Infer,
    signature: Signature,
    record: RequestRecord,
    model: str,
    version: str | None,
    request: InferRequest,
) -> InferResult:
    """Run ``request`` on ``model`` (the default version when ``version`` is None)."""
    if not request.inputs:
        raise BadInputError("'inputs' must hold at least one tensor")
    if request.outputs:  # an unknown name costs the client a 400, not a model run
        _, declared = await signature(model, version)
        _known(request.outputs, [o["name"] for o in declared["outputs"]])
    if all(t.datatype == BYTES for t in request.inputs):
        elements = [element for tensor in request.inputs for element in tensor.data]
        if not elements:
            raise BadInputError("the BYTES inputs hold no element")
        check_media_elements([(BYTES, (len(elements),))])
        inputs = [RequestInput(element, None) for element in elements]
        answers = await infer(record, model, version, inputs, "inputs")
        _, declared = await signature(model, answers[0].version)
        name = declared["outputs"][0]["name"]
        outputs = [Tensor(name, BYTES, (len(answers),), [as_bytes(a.result) for a in answers])]
    else:
        tensors = RequestInput(TensorRequest(tuple(request.inputs)), None)
        answers = await infer(record, model, version, [tensors], None)
        outputs = answers[0].result
        if not isinstance(outputs, list) or not all(isinstance(t, Tensor) for t in outputs):
            raise InferenceError(f"Model {model} answered numeric tensors with something else than tensors")
    version = answers[0].version
    if not request.outputs:
        return InferResult(model, version, request.id, outputs, [request.binary_outputs] * len(outputs))
    by_name = {t.name: t for t in outputs}
    _known(request.outputs, list(by_name))  # again: the version that answered may differ
    chosen = [by_name[r.name] for r in request.outputs]
    binary = [request.binary_outputs if r.binary is None else r.binary for r in request.outputs]
    return InferResult(model, version, request.id, chosen, binary)


def _known(requested: list[RequestedOutput], names: list[str]) -> None:
    have = set(names)
    unknown = [r.name for r in requested if r.name not in have]
    if unknown:
        raise BadInputError(f"unknown output {_names(unknown)}: the model's outputs are {', '.join(names)}")
