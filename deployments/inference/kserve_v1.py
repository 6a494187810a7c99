"""KServe's v1 protocol, as TorchServe serves it: list, readiness, ``:predict``, ``:explain``.

``POST /v1/models/{model}:predict`` takes ``{"instances": [...]}`` and answers
``{"predictions": [...]}``, one prediction per instance, all through the same fan-out as
``/predictions`` (so the instances of a request may share a batch). An instance is
``{"b64": "<base64>"}`` or ``{"data": "<base64>"}`` (an image, audio...), a string (text), or
any other JSON value (numbers, nested lists, an object of named inputs), which goes to the
model as JSON: what the ``tensor`` handler reads. ``:explain`` answers 501 until explanations
exist. Errors keep TorchServe's ``{"code", "type", "message"}`` shape, like the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse

from deployments.inference.predictions import MAX_INPUTS, Predictor
from deployments.inference.request_body import RequestInput, read_body
from deployments.inference.telemetry import record_of
from handlers.errors import BadInputError, NotImplementedFeatureError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

if TYPE_CHECKING:
    from deployments.inference.directory import Directory

ModelName = Annotated[str, Path(pattern=NAME_PATTERN)]
Version = Annotated[str, Path(pattern=VERSION_PATTERN)]


def _decode_b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{where} must be a base64 string, not {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInputError(f"{where} is not valid base64") from None


def instance_input(instance: object, index: int) -> RequestInput:
    """One v1 instance as the model's input."""
    where = f"instances[{index}]"
    if isinstance(instance, str):
        return RequestInput(instance.encode(), None)
    if isinstance(instance, dict):
        if "b64" in instance:
            return RequestInput(_decode_b64(instance["b64"], f"{where}.b64"), None)
        if isinstance(instance.get("data"), str):
            return RequestInput(_decode_b64(instance["data"], f"{where}.data"), None)
    return RequestInput(json.dumps(instance).encode(), "application/json")


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The request's JSON object; 400 saying where it is broken."""
    body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise BadInputError("Invalid JSON body: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"Invalid JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadInputError("Invalid JSON body: nested too deeply") from None
    if not isinstance(document, dict):
        raise BadInputError(f"JSON body must be an object, not {type(document).__name__}")
    return document


def add_kserve_v1_routes(
    app: FastAPI,
    directory: Directory,
    predictor: Predictor,
    authorize: Callable[[str | None], Awaitable[None]],
    max_body_bytes: int,
) -> None:
    """Add the v1 routes to the inference ``app``."""

    async def predict(request: Request, model: str, version: str | None) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        instances = (await read_json(request, max_body_bytes)).get("instances")
        if not isinstance(instances, list):
            raise BadInputError("'instances' must be a list")
        if not instances:
            raise BadInputError("'instances' holds no input")
        if len(instances) > MAX_INPUTS:
            raise BadInputError(
                f"'instances' holds {len(instances)} inputs; at most {MAX_INPUTS} per request"
            )
        inputs = [instance_input(instance, i) for i, instance in enumerate(instances)]
        record = record_of(request.scope)
        answers = await predictor.predict(record, model, version, inputs, where="instances")
        body = {"predictions": [a.result for a in answers]}
        return JSONResponse(body, headers={"x-model-version": answers[0].version})

    async def explain(request: Request, model: str, version: str | None) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        state, _ = await directory.readiness(model, version)  # 404 for unknown models first
        raise NotImplementedFeatureError(
            f"Explanations are not available: model {model} version {state.version} serves predictions only"
        )

    async def model_ready(request: Request, model: str) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        _, reason = await directory.readiness(model, None)
        return JSONResponse(
            {"name": model, "ready": reason is None}, status_code=200 if reason is None else 503
        )

    @app.get("/v1/models", summary="KServe v1: models")
    async def list_models(request: Request) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        return JSONResponse({"models": sorted((await directory.health_table()).versions)})

    @app.get("/v1/models/{model_name}", summary="KServe v1: model readiness")
    async def ready(model_name: ModelName, request: Request) -> JSONResponse:
        return await model_ready(request, model_name)

    @app.post("/v1/models/{model_name}:predict", summary="KServe v1: predict")
    async def predict_default(model_name: ModelName, request: Request) -> JSONResponse:
        return await predict(request, model_name, None)

    @app.post(
        "/v1/models/{model_name}/versions/{model_version}:predict", summary="KServe v1: predict (version)"
    )
    async def predict_version(
        model_name: ModelName, model_version: Version, request: Request
    ) -> JSONResponse:
        return await predict(request, model_name, model_version)

    @app.post("/v1/models/{model_name}:explain", summary="KServe v1: explain (501: not available)")
    async def explain_default(model_name: ModelName, request: Request) -> JSONResponse:
        return await explain(request, model_name, None)

    @app.post(
        "/v1/models/{model_name}/versions/{model_version}:explain", summary="KServe v1: explain (version)"
    )
    async def explain_version(
        model_name: ModelName, model_version: Version, request: Request
    ) -> JSONResponse:
        return await explain(request, model_name, model_version)
