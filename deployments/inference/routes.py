"""The inference API's routes besides the prediction hot path: health, metrics, OpenAPI,
KServe v1 (:mod:`deployments.inference.kserve_v1`) and, under ``/v2``, the Open Inference
Protocol's own app (:mod:`deployments.inference.open_inference`, with OIP's error shape).

FastAPI apps, independent of Ray. ``/predictions`` is served by the entry point
(:mod:`deployments.inference.http_entry`) before these apps are reached; it and the ``/v2``
routes are added to the main app's OpenAPI document, so ``/api-description`` describes the
whole API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import prometheus_client
from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from deployments.common.auth import may_see_details
from deployments.common.http_errors import install_error_handlers
from deployments.inference.data_plane import DataPlane
from deployments.inference.explanations import add_explanation_routes
from deployments.inference.kserve_v1 import add_kserve_v1_routes
from deployments.inference.open_inference import create_open_inference_app
from deployments.inference.telemetry import RECORD_KEY, Telemetry
from handlers.errors import ModelVersionNotFoundError


class OpenInferenceSplit:
    """``/v2`` and below to the Open Inference app, the rest to the main app (plain ASGI)."""

    def __init__(self, main: FastAPI, open_inference: FastAPI) -> None:
        self.main = main
        self.open_inference = open_inference

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        record = scope.get(RECORD_KEY)
        if path == "/v2" or path.startswith("/v2/"):
            if record is not None:
                record.protocol = "oip_v2"
            await self.open_inference(scope, receive, send)
            return
        if record is not None and path.startswith("/v1/"):
            record.protocol = "kserve_v1"
        await self.main(scope, receive, send)


def create_inference_app(
    plane: DataPlane,
    telemetry: Telemetry,
    authorize: Callable[[str | None], Awaitable[None]],
    max_body_bytes: int,
) -> OpenInferenceSplit:
    """The ASGI app behind the entry point: TorchServe's and KServe v1's routes, and OIP v2's
    app, dispatched by path (:class:`OpenInferenceSplit`)."""
    app = FastAPI(
        title="raytorch inference API",
        description="TorchServe-compatible inference API served by Ray Serve.",
        version="0.1.0",
        openapi_url=None,  # served at /api-description instead, as TorchServe does
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)

    @app.get("/ping", summary="Health of the server and its models")
    async def ping(request: Request) -> JSONResponse:
        unhealthy = await plane.unhealthy()
        if unhealthy:
            body: dict = {"status": "Unhealthy"}
            if await may_see_details(authorize, request.headers.get("authorization")):
                body["models"] = unhealthy
            return JSONResponse(body, status_code=500)
        return JSONResponse({"status": "Healthy"})

    @app.get("/api-description", summary="OpenAPI description of this API")
    async def api_description() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.options("/", summary="OpenAPI description of this API (TorchServe's form)")
    async def api_description_options() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/metrics", summary="Prometheus metrics (TorchServe's names and ours)")
    async def metrics(
        request: Request,
        names: list[str] | None = Query(None, alias="name[]"),  # noqa: B008
    ) -> Response:
        await authorize(request.headers.get("authorization"))  # its labels name every model
        table = await plane.health_table()
        telemetry.metrics.set_replicas(table.ready_replicas())
        telemetry.metrics.pools.set_state(table, await plane.pool_reports() if table.pools else {})
        wanted = None
        if names:
            suffixes = ("", "_total", "_bucket", "_count", "_sum")
            wanted = [name + suffix for name in names for suffix in suffixes]
        body = telemetry.metrics.render(wanted)
        return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.options("/predictions/{model_name}", include_in_schema=False)
    async def model_api(model_name: str) -> JSONResponse:
        return JSONResponse(model_openapi(app, model_name, await plane.versions(model_name)))

    @app.options("/predictions/{model_name}/{model_version}", include_in_schema=False)
    async def model_version_api(model_name: str, model_version: str) -> JSONResponse:
        versions = await plane.versions(model_name)
        if model_version not in versions:
            raise ModelVersionNotFoundError.of(model_name, model_version)
        return JSONResponse(model_openapi(app, model_name, [model_version]))

    add_explanation_routes(app, plane, authorize, max_body_bytes)
    add_kserve_v1_routes(app, plane, authorize, max_body_bytes)
    open_inference = create_open_inference_app(plane, authorize, max_body_bytes)
    describe_predictions(app, open_inference)
    return OpenInferenceSplit(app, open_inference)


def model_openapi(app: FastAPI, model: str, versions: list[str]) -> dict:
    """One model's inference API (TorchServe's answer to ``OPTIONS /predictions/{m}``): the
    routes of this app that take a model name, with the name filled in."""
    schema = app.openapi()
    paths = {}
    for path, operations in schema["paths"].items():
        if "{model_name}" in path:
            paths[path.replace("{model_name}", model)] = {
                method: {
                    **operation,
                    "parameters": [p for p in operation.get("parameters", []) if p["name"] != "model_name"],
                }
                for method, operation in operations.items()
            }
    return {
        "openapi": schema.get("openapi", "3.1.0"),
        "info": {
            "title": f"RESTful API for: {model}",
            "version": schema["info"]["version"],
            "description": f"Versions: {', '.join(versions)}",
        },
        "paths": paths,
        "components": schema.get("components", {}),
    }


def _prediction_operation(summary: str, with_version: bool, method: str = "post") -> dict:
    parameters = [{"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if with_version:
        parameters.append(
            {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if method == "get":
        query = {"name": "data", "in": "query", "required": True, "schema": {"type": "string"}}
        return {
            "summary": summary + " (input as query text)",
            "parameters": [*parameters, {**query, "description": "The input, as text (repeat for several)."}],
            "responses": _prediction_responses(),
        }
    return {
        "summary": summary,
        "parameters": parameters,
        "requestBody": {
            "description": "The input as the raw body (curl -T image.jpg), or multipart fields named "
            "'data' (one result per field, answered as a list).",
            "content": {"application/octet-stream": {}, "multipart/form-data": {}},
        },
        "responses": _prediction_responses(),
    }


def _prediction_responses() -> dict:
    return {
        "200": {
            "description": "The handler's answer (JSON; a handler's text or bytes as they are); "
            "headers x-batch-size, x-model-version."
        },
        "400": {"description": "The input cannot be used (the message says why)."},
        "404": {"description": "Unknown model or version."},
        "503": {"description": "No ready replica, or overloaded (Retry-After)."},
    }


def describe_predictions(app: FastAPI, open_inference: FastAPI) -> None:
    """Add ``/predictions`` (POST, PUT and GET, as TorchServe) and the ``/v2`` routes to
    ``app``'s OpenAPI document."""
    plain = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = plain()
            for path, with_version, summary in (
                ("/predictions/{model_name}", False, "Predict with the default version"),
                ("/predictions/{model_name}/{model_version}", True, "Predict with one version"),
            ):
                operation = _prediction_operation(summary, with_version)
                schema["paths"][path] = {
                    "post": operation,
                    "put": operation,
                    "get": _prediction_operation(summary, with_version, "get"),
                }
            v2 = get_openapi(title="v2", version="2", routes=open_inference.routes)
            schema["paths"].update(v2["paths"])
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                v2.get("components", {}).get("schemas", {})
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
