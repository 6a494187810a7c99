"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

What tritonclient's gRPC client and KServe's call. Inference runs through the same code as
REST (:mod:`deployments.inference.oip_infer`); inputs come as ``raw_input_contents`` (what
tritonclient sends) or typed ``contents`` (FP16 and BF16 only raw, as the protocol says), and
outputs always go back as ``raw_output_contents``. ServerLive and ServerReady are open (probes);
with ``inference_auth`` the other RPCs need ``authorization: Bearer <token>`` metadata.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from deployments.inference.data_plane import DataPlane
from deployments.inference.grpc_server import generic_handler, handle_call, metadata_of, open_record
from deployments.inference.off_loop import parse_off_loop
from deployments.inference.oip_codec import checked_shape, tensor_from_raw, tensor_to_raw
from deployments.inference.oip_infer import (
    InferRequest,
    InferResult,
    RequestedOutput,
    check_media_elements,
    checked_outputs,
)
from deployments.inference.telemetry import Telemetry
from deployments.protos import OIP_SERVICE, service_methods
from handlers.errors import BadInputError, ModelNotFoundError
from handlers.tensor_data import BYTES, DATATYPES, Tensor, element_count
from handlers.tensor_json import json_to_array

# Typed contents field of each datatype; FP16 and BF16 travel only as raw contents.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def request_from_proto(message: Any) -> InferRequest:
    """A ModelInferRequest as the protocol-neutral request; 400 naming what is wrong."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadInputError(f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs")
    tensors = []
    shapes = []
    for i, tensor in enumerate(message.inputs):
        where = f"inputs[{i}] ({tensor.name})"
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadInputError(f"{where}: shape {list(shape)} has a negative dimension")
        shapes.append(checked_shape(shape, where))
    check_media_elements([(t.datatype, shape) for t, shape in zip(message.inputs, shapes, strict=True)])
    for i, (tensor, shape) in enumerate(zip(message.inputs, shapes, strict=True)):
        where = f"inputs[{i}] ({tensor.name})"
        if tensor.datatype not in DATATYPES:
            raise BadInputError(f"{where}: datatype {tensor.datatype!r} is not one of {', '.join(DATATYPES)}")
        if raw:
            tensors.append(tensor_from_raw(tensor.name, tensor.datatype, shape, raw[i], where))
            continue
        field = CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise BadInputError(f"{where}: {tensor.datatype} data travels only in raw_input_contents")
        contents = getattr(tensor.contents, field)
        if len(contents) != element_count(shape):  # counted before any element is copied
            raise BadInputError(
                f"{where}: {len(contents)} elements of data, but shape {list(shape)} holds "
                f"{element_count(shape)}"
            )
        values = list(contents)
        data = values if tensor.datatype == BYTES else json_to_array(values, tensor.datatype, where).tobytes()
        tensors.append(Tensor(tensor.name, tensor.datatype, shape, data))
    outputs = checked_outputs([RequestedOutput(o.name) for o in message.outputs])
    return InferRequest(tensors, message.id, outputs)


def response_to_proto(result: InferResult, response_class: type[Any]) -> Any:
    """The ModelInferResponse of ``result``, every output as raw contents."""
    response = response_class(model_name=result.model_name, model_version=result.model_version, id=result.id)
    for tensor in result.outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        response.raw_output_contents.append(tensor_to_raw(tensor))
    return response


class OpenInferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService``."""

    def __init__(
        self,
        plane: DataPlane,
        telemetry: Telemetry,
        authorize: Callable[[str | None], Awaitable[None]],
    ) -> None:
        self.methods = service_methods(OIP_SERVICE)
        self._plane = plane
        self._telemetry = telemetry
        self._authorize = authorize

    def handler(self) -> grpc.GenericRpcHandler:
        """The service, for the gRPC server."""
        return generic_handler(OIP_SERVICE, self.methods, self)

    async def _call(
        self, context: Any, rpc: str, work: Callable[[Any], Awaitable[Any]], auth: bool = True
    ) -> Any:
        record = open_record(context, f"/{OIP_SERVICE}/{rpc}", "grpc_oip")

        async def run() -> Any:
            if auth:
                await self._authorize(metadata_of(context).get("authorization"))
            return await work(record)

        return await handle_call(self._telemetry, context, record, run)

    def _reply(self, rpc: str, **fields: Any) -> Any:
        return self.methods[rpc].response(**fields)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        async def work(_: Any) -> Any:
            return self._reply("ServerLive", live=self._plane.live())

        return await self._call(context, "ServerLive", work, auth=False)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def work(_: Any) -> Any:
            return self._reply("ServerReady", ready=await self._plane.ready())

        return await self._call(context, "ServerReady", work, auth=False)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work(_: Any) -> Any:
            # Unknown models are "not ready" rather than an error, as Triton answers (and as
            # tritonclient's is_model_ready expects: a boolean).
            try:
                readiness = await self._plane.model_ready(request.name, request.version or None)
            except ModelNotFoundError:
                return self._reply("ModelReady", ready=False)
            return self._reply("ModelReady", ready=readiness.ready)

        return await self._call(context, "ModelReady", work)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def work(_: Any) -> Any:
            return self._reply("ServerMetadata", **self._plane.server_metadata())

        return await self._call(context, "ServerMetadata", work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work(_: Any) -> Any:
            metadata = await self._plane.metadata(request.name, request.version or None)
            response = self._reply(
                "ModelMetadata", name=metadata.name, versions=metadata.versions, platform=metadata.platform
            )
            for tensor in metadata.inputs:
                response.inputs.add(**tensor)
            for tensor in metadata.outputs:
                response.outputs.add(**tensor)
            response.properties.update({"handler": metadata.handler, "version": metadata.version})
            return response

        return await self._call(context, "ModelMetadata", work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work(record: Any) -> Any:
            parsed = await parse_off_loop(request.ByteSize(), request_from_proto, request)
            version = request.model_version or None
            result = await self._plane.infer_tensors(record, request.model_name, version, parsed)
            return response_to_proto(result, self.methods["ModelInfer"].response)

        return await self._call(context, "ModelInfer", work)
