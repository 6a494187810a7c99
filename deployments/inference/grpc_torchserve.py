"""TorchServe's gRPC APIs: ``InferenceAPIsService`` and ``ManagementAPIsService``.

What TorchServe's ``inference.proto`` and ``management.proto`` clients call, on the ingress's
gRPC port (TorchServe uses 7070 and 7071; here both services share ``grpc_options.port``).

- ``Predictions``: the request's ``input`` map holds the model input under ``data`` (or
  ``body``, or as its only entry), as TorchServe's handlers read it; the answer's
  ``prediction`` is what the REST API would send (a handler's text or bytes as they are,
  anything else as JSON). ``StreamPredictions`` sends each partial answer of the handler as
  its own message as soon as it exists (:mod:`deployments.inference.streaming`; a handler
  that does not stream sends one); ``StreamPredictions2`` does the same for each message of a
  bidirectional stream in order, each part echoing the message's ``sequence_id``, and reports
  a failed message in its ``status`` without ending the stream, as TorchServe does.
- Management calls go to the management deployment, which answers them with the REST API's
  own code (:mod:`deployments.management.grpc_calls`), token check included.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from deployments.common.forwarding import ForwardedResponse, ManagementCall
from deployments.common.http_errors import grpc_code_name
from deployments.common.messages import Rejected
from deployments.inference.data_plane import DataPlane
from deployments.inference.grpc_server import (
    abort_with,
    as_error,
    generic_handler,
    handle_call,
    metadata_of,
    open_record,
)
from deployments.inference.oip_infer import as_bytes
from deployments.inference.request_body import RequestInput
from deployments.inference.telemetry import REQUEST_ID_HEADER, Telemetry
from deployments.protos import TORCHSERVE_INFERENCE, TORCHSERVE_MANAGEMENT, message, service_methods
from handlers.errors import BadInputError, RaytorchError, UnauthorizedError

INPUT_KEYS = ("data", "body")
Authorize = Callable[[str | None], Awaitable[None]]


def model_input(inputs: dict[str, bytes]) -> bytes:
    """The model input of a PredictionsRequest's ``input`` map."""
    for key in INPUT_KEYS:
        if key in inputs:
            return inputs[key]
    if len(inputs) == 1:
        return next(iter(inputs.values()))
    sent = ", ".join(sorted(inputs)) or "none"
    raise BadInputError(
        f"PredictionsRequest.input must hold the model input under 'data' (keys sent: {sent})"
    )


def prediction_bytes(result: Any) -> bytes:
    """A PredictionResponse's ``prediction``, as TorchServe's worker encodes a handler's answer:
    text as UTF-8 and bytes as they are (as over REST), anything else as JSON."""
    return result.encode("utf-8") if isinstance(result, str) else as_bytes(result)


def reply_message(response: ForwardedResponse) -> str:
    """``ManagementResponse.msg`` of a successful answer, as TorchServe fills it: the status
    sentence for register, scale, set-default and unregister, the JSON text for describe and
    list. A failed answer raises its error (its status picks the gRPC code)."""
    try:
        body = json.loads(response.body) if response.body else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = {"message": response.body.decode("utf-8", "replace")}
    if response.status >= 400:
        text = body.get("message", "") if isinstance(body, dict) else str(body)
        retry_after = dict(response.headers).get(b"retry-after", b"")
        error = RaytorchError(
            text or f"HTTP {response.status}",
            retry_after_s=float(retry_after) if retry_after.isdigit() else None,
        )
        error.status = response.status
        error.type_name = body.get("type", error.type_name) if isinstance(body, dict) else error.type_name
        raise error
    if isinstance(body, dict) and set(body) == {"status"}:
        return str(body["status"])
    return json.dumps(body, indent=2)


class TorchServeInferenceServicer:
    """The RPCs of TorchServe's ``InferenceAPIsService``."""

    def __init__(self, plane: DataPlane, telemetry: Telemetry, authorize: Authorize) -> None:
        self.methods = service_methods(TORCHSERVE_INFERENCE)
        self._plane = plane
        self._telemetry = telemetry
        self._authorize = authorize
        self._status = message("google.rpc.Status")

    def handler(self) -> grpc.GenericRpcHandler:
        """The service, for the gRPC server."""
        return generic_handler(TORCHSERVE_INFERENCE, self.methods, self)

    async def Ping(self, request: Any, context: Any) -> Any:
        record = open_record(context, f"/{TORCHSERVE_INFERENCE}/Ping", "grpc_torchserve")

        async def work() -> Any:
            unhealthy = await self._plane.unhealthy()
            health: dict[str, Any] = {"status": "Unhealthy" if unhealthy else "Healthy"}
            try:
                await self._authorize(metadata_of(context).get("authorization"))
                if unhealthy:
                    health["models"] = unhealthy
            except UnauthorizedError:  # the verdict for everyone, the reasons with the token
                pass
            return self.methods["Ping"].response(health=json.dumps(health))

        return await handle_call(self._telemetry, context, record, work)

    async def _predict(self, request: Any, context: Any, rpc: str) -> Any:
        record = open_record(context, f"/{TORCHSERVE_INFERENCE}/{rpc}", "grpc_torchserve")

        async def work() -> Any:
            await self._authorize(metadata_of(context).get("authorization"))
            data = model_input(dict(request.input))
            version = request.model_version or None
            answers = await self._plane.infer(record, request.model_name, version, [RequestInput(data, None)])
            return self.methods[rpc].response(prediction=prediction_bytes(answers[0].result))

        return await handle_call(self._telemetry, context, record, work)

    async def Predictions(self, request: Any, context: Any) -> Any:
        return await self._predict(request, context, "Predictions")

    async def _parts(self, record: Any, request: Any, context: Any) -> AsyncIterator[bytes]:
        """The predictions of one request's partial answers as its handler produces them; a
        failure before or between them raises (the caller answers it)."""
        await self._authorize(metadata_of(context).get("authorization"))
        data = RequestInput(model_input(dict(request.input)), None)
        _, parts = await self._plane.stream(record, request.model_name, request.model_version or None, data)
        try:
            async for part in parts:
                if isinstance(part, Rejected):  # failed midway: the stream ends with its status
                    raise part.error
                yield prediction_bytes(part)
        finally:
            await parts.aclose()

    async def StreamPredictions(self, request: Any, context: Any) -> AsyncIterator[Any]:
        record = open_record(context, f"/{TORCHSERVE_INFERENCE}/StreamPredictions", "grpc_torchserve")
        response_class = self.methods["StreamPredictions"].response
        status = 500
        try:
            await context.send_initial_metadata(((REQUEST_ID_HEADER, record.request_id),))
            async for prediction in self._parts(record, request, context):
                yield response_class(prediction=prediction)
            status = 200
        except asyncio.CancelledError:
            status = 499  # the client went away: closing the parts stopped the handler
            raise
        except Exception as exc:
            error = as_error(exc, record)
            status = error.status
            await abort_with(context, error)
        finally:
            self._telemetry.finish(record, status)

    async def StreamPredictions2(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Each message's partial answers as they are produced, each with the message's
        ``sequence_id``; a failure (before or midway) is one more message with its ``status``,
        and the stream goes on with the next message."""
        response_class = self.methods["StreamPredictions2"].response
        async for request in requests:
            record = open_record(context, f"/{TORCHSERVE_INFERENCE}/StreamPredictions2", "grpc_torchserve")
            status = 500
            try:
                async for prediction in self._parts(record, request, context):
                    yield response_class(prediction=prediction, sequence_id=request.sequence_id)
                status = 200
            except asyncio.CancelledError:
                status = 499
                raise
            except Exception as exc:
                error = as_error(exc, record)
                status = error.status
                code = grpc.StatusCode[grpc_code_name(error)].value[0]
                yield response_class(
                    sequence_id=request.sequence_id, status=self._status(code=code, message=error.message)
                )
            finally:
                self._telemetry.finish(record, status)


class TorchServeManagementServicer:
    """The RPCs of TorchServe's ``ManagementAPIsService``, answered by the management app."""

    RPCS = ("DescribeModel", "ListModels", "RegisterModel", "ScaleWorker", "SetDefault", "UnregisterModel")

    def __init__(
        self, manage: Callable[[ManagementCall], Awaitable[ForwardedResponse]], telemetry: Telemetry
    ) -> None:
        self.methods = service_methods(TORCHSERVE_MANAGEMENT)
        self._manage = manage
        self._telemetry = telemetry
        for rpc in self.RPCS:
            setattr(self, rpc, self._rpc(rpc))

    def handler(self) -> grpc.GenericRpcHandler:
        """The service, for the gRPC server."""
        return generic_handler(TORCHSERVE_MANAGEMENT, self.methods, self)

    def _rpc(self, rpc: str) -> Callable[[Any, Any], Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            record = open_record(context, f"/{TORCHSERVE_MANAGEMENT}/{rpc}", "grpc_torchserve")

            async def work() -> Any:
                fields = {f.name: getattr(request, f.name) for f in request.DESCRIPTOR.fields}
                authorization = metadata_of(context).get("authorization")
                response = await self._manage(ManagementCall(rpc, fields, authorization))
                return self.methods[rpc].response(msg=reply_message(response))

            return await handle_call(self._telemetry, context, record, work)

        return call
