"""KServe's v1 protocol, as TorchServe serves it: list, readiness, ``:predict``, ``:explain``.

``POST /v1/models/{model}:predict`` takes ``{"instances": [...]}`` and answers
``{"predictions": [...]}``, one prediction per instance, all through the same fan-out as
``/predictions`` (so the instances of a request may share a batch). An instance is
``{"b64": "<base64>"}`` or ``{"data": "<base64>"}`` (an image, audio...), a string (text), or
any other JSON value (numbers, nested lists, an object of named inputs), which goes to the
model as JSON: what the ``tensor`` handler reads. ``:explain`` takes the same instances and
answers ``{"explanations": [...]}``, one per instance (:mod:`deployments.inference.explanations`;
query parameters ``target``, ``n_steps``, ``format=png``: each heat map as ``{"b64": ...}``).
Errors keep TorchServe's ``{"code", "type", "message"}`` shape, like the rest of the API.

JSON has no infinity or NaN: a prediction holding one answers it as ``null`` (what pydantic and
orjson write for them), never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response

from deployments.inference.data_plane import DataPlane
from deployments.inference.explanations import explain_request
from deployments.inference.off_loop import parse_off_loop
from deployments.inference.request_body import MAX_INPUTS, RequestInput, read_body
from deployments.inference.telemetry import record_of
from handlers.errors import BadInputError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

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


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body's JSON object; 400 saying where it is broken."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise BadInputError("Invalid JSON body: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"Invalid JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadInputError("Invalid JSON body: nested too deeply") from None
    except ValueError:  # not a JSONDecodeError: Python's limit on the digits of an integer
        raise BadInputError(
            f"Invalid JSON body: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if not isinstance(document, dict):
        raise BadInputError(f"JSON body must be an object, not {type(document).__name__}")
    return document


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The request's JSON object (parsed off the event loop when big); 400 saying where it is
    broken."""
    body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
    return await parse_off_loop(len(body), parse_json_object, body)


def parse_instances(body: bytes) -> list[RequestInput]:
    """The inputs of a ``:predict`` body; 400 saying what is wrong."""
    instances = parse_json_object(body).get("instances")
    if not isinstance(instances, list):
        raise BadInputError("'instances' must be a list")
    if not instances:
        raise BadInputError("'instances' holds no input")
    if len(instances) > MAX_INPUTS:
        raise BadInputError(f"'instances' holds {len(instances)} inputs; at most {MAX_INPUTS} per request")
    return [instance_input(instance, i) for i, instance in enumerate(instances)]


def finite_json(value: Any) -> bytes:
    """``value`` as JSON, infinities and NaN written as ``null`` (JSON has neither)."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_nulls(value), allow_nan=False, separators=(",", ":")).encode()


def _nulls(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls(v) for v in value]
    return value


def add_kserve_v1_routes(
    app: FastAPI,
    plane: DataPlane,
    authorize: Callable[[str | None], Awaitable[None]],
    max_body_bytes: int,
) -> None:
    """Add the v1 routes to the inference ``app``."""

    async def read_instances(request: Request) -> list[RequestInput]:
        body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
        return await parse_off_loop(len(body), parse_instances, body)

    async def predict(request: Request, model: str, version: str | None) -> Response:
        await authorize(request.headers.get("authorization"))
        inputs = await read_instances(request)
        record = record_of(request.scope)
        answers = await plane.infer(record, model, version, inputs, where="instances")
        content = finite_json({"predictions": [a.result for a in answers]})
        headers = {"x-model-version": answers[0].version}
        return Response(content, media_type="application/json", headers=headers)

    async def explain(request: Request, model: str, version: str | None) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        await plane.model_ready(model, version)  # 404 for an unknown model before the body
        wanted = explain_request(dict(request.query_params), None)  # JSON answers; PNG only if asked
        inputs = await read_instances(request)
        record = record_of(request.scope)
        answers = await plane.explain(record, model, version, inputs, wanted, where="instances")
        explanations = [
            {"b64": base64.b64encode(a.result).decode()} if isinstance(a.result, bytes) else a.result
            for a in answers
        ]
        return JSONResponse({"explanations": explanations}, headers={"x-model-version": answers[0].version})

    async def model_ready(request: Request, model: str) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        readiness = await plane.model_ready(model, None)
        return JSONResponse(
            {"name": model, "ready": readiness.ready}, status_code=200 if readiness.ready else 503
        )

    @app.get("/v1/models", summary="KServe v1: models")
    async def list_models(request: Request) -> JSONResponse:
        await authorize(request.headers.get("authorization"))
        return JSONResponse({"models": await plane.models()})

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

    @app.post("/v1/models/{model_name}:explain", summary="KServe v1: explain (Captum attributions)")
    async def explain_default(model_name: ModelName, request: Request) -> JSONResponse:
        return await explain(request, model_name, None)

    @app.post(
        "/v1/models/{model_name}/versions/{model_version}:explain", summary="KServe v1: explain (version)"
    )
    async def explain_version(
        model_name: ModelName, model_version: Version, request: Request
    ) -> JSONResponse:
        return await explain(request, model_name, model_version)
