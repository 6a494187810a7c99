"""KServe's v1 and v2 (Open Inference Protocol) routes, as TorchServe serves them.

``POST /v1/models/{model}:predict`` takes ``{"instances": [...]}`` and answers
``{"predictions": [...]}``; ``POST /v2/models/{model}/infer`` takes ``BYTES`` inputs and
answers the v2 response shape. Images travel base64-encoded: a v1 instance is
``{"data": "<base64>"}`` or ``{"b64": "<base64>"}`` (a plain string is sent as UTF-8 text, for
text models); a v2 input is ``{"datatype": "BYTES", "data": ["<base64>", ...]}``. Every
instance goes through the same router as ``/predictions``, so all may share a batch.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse

from deployments.common.auth import may_see_details
from deployments.inference.predictions import MAX_INPUTS, Predictor
from deployments.inference.request_body import RequestInput, read_body
from deployments.inference.telemetry import record_of
from handlers.errors import BadInputError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

if TYPE_CHECKING:
    from deployments.inference.routes import Directory

ModelName = Annotated[str, Path(pattern=NAME_PATTERN)]
Version = Annotated[str, Path(pattern=VERSION_PATTERN)]


def _decode_b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{where} must be a base64 string, not {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInputError(f"{where} is not valid base64") from None


def _v1_instance(instance: object, index: int) -> bytes:
    where = f"instances[{index}]"
    if isinstance(instance, str):
        return instance.encode()
    if isinstance(instance, dict):
        for key in ("b64", "data"):
            if key in instance:
                return _decode_b64(instance[key], f"{where}.{key}")
    raise BadInputError(f'{where} must be {{"data": "<base64>"}}, {{"b64": "<base64>"}} or a string')


def _v2_inputs(document: dict[str, Any]) -> tuple[str, list[bytes]]:
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadInputError("'inputs' must be a non-empty list of tensors")
    name, items = "output-0", []
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise BadInputError(f"{where} must be an object with name, shape, datatype and data")
        if tensor.get("datatype") != "BYTES":
            raise BadInputError(
                f"{where}.datatype is {tensor.get('datatype')!r}: this server takes BYTES inputs "
                "holding base64-encoded images or UTF-8 text"
            )
        data = tensor.get("data")
        if not isinstance(data, list):
            raise BadInputError(f"{where}.data must be a list of base64 strings")
        shape = tensor.get("shape")
        if shape is not None and shape != [len(data)]:
            raise BadInputError(f"{where}.shape {shape!r} does not match its {len(data)} data items")
        items += [_decode_b64(value, f"{where}.data[{j}]") for j, value in enumerate(data)]
    return name, items


def _check_count(items: list[bytes], what: str) -> None:
    if not items:
        raise BadInputError(f"'{what}' holds no input")
    if len(items) > MAX_INPUTS:
        raise BadInputError(f"'{what}' holds {len(items)} inputs; at most {MAX_INPUTS} per request")


def add_open_inference_routes(
    app: FastAPI,
    directory: Directory,
    predictor: Predictor,
    authorize: Callable[[str | None], Awaitable[None]],
    max_body_bytes: int,
) -> None:
    """Add the v1/v2 routes to the inference ``app``, predicting through ``predictor``."""

    async def read_json(request: Request) -> dict[str, Any]:
        body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
        try:
            document = json.loads(body)
        except UnicodeDecodeError:
            raise BadInputError("Invalid JSON body: it is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise BadInputError(
                f"Invalid JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise BadInputError("Invalid JSON body: nested too deeply") from None
        if not isinstance(document, dict):
            raise BadInputError(f"JSON body must be an object, not {type(document).__name__}")
        return document

    async def predict_all(
        request: Request, protocol: str, model: str, version: str | None, items: list[bytes], what: str
    ) -> list[Any]:
        record = record_of(request.scope)
        record.protocol = protocol
        inputs = [RequestInput(data, None) for data in items]
        return await predictor.predict(record, model, version, inputs, where=what)

    async def v1_predict(model_name: ModelName, request: Request, version: str | None = None) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        instances = (await read_json(request)).get("instances")
        if not isinstance(instances, list):
            raise BadInputError("'instances' must be a list")
        items = [_v1_instance(instance, i) for i, instance in enumerate(instances)]
        _check_count(items, "instances")
        answers = await predict_all(request, "kserve_v1", model_name, version, items, "instances")
        return JSONResponse(
            {"predictions": [a.result for a in answers]}, headers={"x-model-version": answers[0].version}
        )

    async def v2_infer(model_name: ModelName, request: Request, version: str | None = None) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        document = await read_json(request)
        name, items = _v2_inputs(document)
        _check_count(items, "inputs")
        answers = await predict_all(request, "oip_v2", model_name, version, items, "inputs")
        body: dict[str, Any] = {
            "model_name": model_name,
            "model_version": answers[0].version,
            "outputs": [
                {
                    "name": name,
                    "shape": [len(answers)],
                    "datatype": "BYTES",
                    "data": [a.result for a in answers],
                }
            ],
        }
        if isinstance(document.get("id"), str):
            body["id"] = document["id"]
        return JSONResponse(body, headers={"x-model-version": answers[0].version})

    async def v1_predict_version(
        model_name: ModelName, model_version: Version, request: Request
    ) -> JSONResponse:
        return await v1_predict(model_name, request, model_version)

    async def v2_infer_version(
        model_name: ModelName, model_version: Version, request: Request
    ) -> JSONResponse:
        return await v2_infer(model_name, request, model_version)

    app.add_api_route("/v1/models/{model_name}:predict", v1_predict, methods=["POST"], summary="KServe v1")
    app.add_api_route(
        "/v1/models/{model_name}/versions/{model_version}:predict", v1_predict_version, methods=["POST"]
    )
    app.add_api_route("/v2/models/{model_name}/infer", v2_infer, methods=["POST"], summary="Open Inference")
    app.add_api_route(
        "/v2/models/{model_name}/versions/{model_version}/infer", v2_infer_version, methods=["POST"]
    )

    @app.get("/v2/health/live", summary="Open Inference liveness")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", summary="Open Inference readiness: every model has a ready replica")
    async def ready(request: Request) -> JSONResponse:
        unhealthy = (await directory.health_table()).unhealthy()
        if unhealthy:
            body: dict[str, Any] = {"ready": False}
            if await may_see_details(authorize, request.headers.get("authorization")):
                body["models"] = unhealthy
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{model_name}", summary="Open Inference model metadata")
    async def metadata(model_name: ModelName, request: Request) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        versions = await directory.versions(model_name)
        return JSONResponse(
            {
                "name": model_name,
                "versions": versions,
                "platform": "pytorch",
                "inputs": [{"name": "data", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "output-0", "datatype": "BYTES", "shape": [-1]}],
            }
        )
