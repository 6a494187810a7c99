"""The Open Inference Protocol (KServe v2) over REST: ``/v2`` and everything under it.

Its own FastAPI app, because the protocol answers errors as ``{"error": "..."}`` (mapped in
:mod:`deployments.common.http_errors` like every other answer). Server metadata, liveness,
readiness, model metadata and readiness (with or without a version) and inference, with the
binary tensor data extension (:mod:`deployments.inference.oip_codec`). With
``inference_auth`` every route needs the token except the two probes; readiness then names
the models that are not ready (and why) only to a caller holding the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response

from deployments.common.http_errors import install_error_handlers, oip_error_body
from deployments.inference.data_plane import DataPlane, ModelMetadata
from deployments.inference.off_loop import parse_off_loop
from deployments.inference.oip_codec import HEADER_LENGTH, encode_result, parse_request
from deployments.inference.request_body import read_body
from deployments.inference.telemetry import record_of
from handlers.errors import UnauthorizedError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

ModelName = Annotated[str, Path(pattern=NAME_PATTERN)]
Version = Annotated[str, Path(pattern=VERSION_PATTERN)]


def model_metadata(metadata: ModelMetadata) -> dict[str, Any]:
    """``GET /v2/models/{m}``: the model's versions and what its version declares."""
    return {
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": metadata.inputs,
        "outputs": metadata.outputs,
    }


def create_open_inference_app(
    plane: DataPlane,
    authorize: Callable[[str | None], Awaitable[None]],
    max_body_bytes: int,
) -> FastAPI:
    """The ``/v2`` routes, answered by ``plane``."""
    app = FastAPI(title="Open Inference Protocol", openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app, oip_error_body)

    async def authorized(request: Request) -> None:
        await authorize(request.headers.get("authorization"))

    @app.get("/v2", summary="Server metadata: name, version, extensions")
    async def metadata_of_server(request: Request) -> JSONResponse:
        await authorized(request)
        return JSONResponse(plane.server_metadata())

    @app.get("/v2/health/live", summary="Liveness: the server answers")
    async def live() -> JSONResponse:
        return JSONResponse({"live": plane.live()})

    @app.get("/v2/health/ready", summary="Readiness: every model version has a ready replica")
    async def ready(request: Request) -> JSONResponse:
        unhealthy = await plane.unhealthy()
        if not unhealthy:
            return JSONResponse({"ready": True})
        try:
            await authorized(request)
        except UnauthorizedError:  # probes get the verdict; the reasons need the token
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": False, "models": unhealthy}, status_code=503)

    async def metadata(request: Request, model: str, version: str | None) -> JSONResponse:
        await authorized(request)
        return JSONResponse(model_metadata(await plane.metadata(model, version)))

    async def model_ready(request: Request, model: str, version: str | None) -> JSONResponse:
        await authorized(request)
        readiness = await plane.model_ready(model, version)
        if readiness.error is None:
            return JSONResponse({"name": model, "version": readiness.version, "ready": True})
        body = {"name": model, "version": readiness.version, "ready": False, "error": readiness.error.message}
        return JSONResponse(body, status_code=503, headers=readiness.error.headers())

    async def run(request: Request, model: str, version: str | None) -> Response:
        await authorized(request)
        body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
        parsed = await parse_off_loop(len(body), parse_request, body, request.headers.get(HEADER_LENGTH))
        result = await plane.infer_tensors(record_of(request.scope), model, version, parsed)
        content, headers = encode_result(result)
        headers["x-model-version"] = result.model_version
        return Response(content, headers=headers)

    @app.get("/v2/models/{model_name}", summary="Model metadata (default version)")
    async def metadata_default(model_name: ModelName, request: Request) -> JSONResponse:
        return await metadata(request, model_name, None)

    @app.get("/v2/models/{model_name}/versions/{model_version}", summary="Model metadata of a version")
    async def metadata_version(
        model_name: ModelName, model_version: Version, request: Request
    ) -> JSONResponse:
        return await metadata(request, model_name, model_version)

    @app.get("/v2/models/{model_name}/ready", summary="Model readiness (default version)")
    async def ready_default(model_name: ModelName, request: Request) -> JSONResponse:
        return await model_ready(request, model_name, None)

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", summary="Readiness of a version")
    async def ready_version(model_name: ModelName, model_version: Version, request: Request) -> JSONResponse:
        return await model_ready(request, model_name, model_version)

    @app.post("/v2/models/{model_name}/infer", summary="Inference (default version)")
    async def infer_default(model_name: ModelName, request: Request) -> Response:
        return await run(request, model_name, None)

    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", summary="Inference with a version")
    async def infer_version(model_name: ModelName, model_version: Version, request: Request) -> Response:
        return await run(request, model_name, model_version)

    return app
