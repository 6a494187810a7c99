"""The TorchServe-compatible inference API as a FastAPI app, independent of Ray.

``create_app(settings, router)`` builds the routes; the router decides where a model's
requests go (Ray handles in production, fakes in integration tests). Every error leaves
as ``{"code", "type", "message"}`` with its status, mapped in one place below.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.auth import check_bearer
from deployments.messages import Answer
from deployments.observability import REQUEST_ID_HEADER, install_observability
from deployments.open_inference import add_open_inference_routes
from deployments.request_body import check_names, read_inputs
from deployments.settings import IngressArgs
from handlers.errors import RaytorchError

logger = logging.getLogger("raytorch.ingress")


class Router(Protocol):
    """Where predictions go; implemented over Ray Serve handles in production."""

    async def predict(self, model: str, version: str | None, body: bytes, content_type: str | None) -> Answer:
        """Run one input through a model version (default version when None)."""

    def unhealthy_models(self) -> dict[str, str]:
        """Models without a ready replica, mapped to the reason."""

    def ready_replicas(self) -> dict[tuple[str, str], int]:
        """(model, version) -> replicas able to serve."""

    async def token(self) -> str:
        """The bearer token inference requires when ``inference_auth`` is on."""

    async def versions(self, model: str) -> list[str]:
        """Known versions of a model, oldest first; ModelNotFoundError when it has none."""


def error_response(
    status: int, type_name: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error shape shared with TorchServe."""
    return JSONResponse({"code": status, "type": type_name, "message": message}, status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the JSON error shape; no traceback ever reaches a client."""

    @app.exception_handler(RaytorchError)
    async def _raytorch_error(request: Request, exc: RaytorchError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else None
        return error_response(exc.status, exc.type_name, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        return error_response(400, "BadRequestException", f"Invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "ResourceNotFoundException", 405: "MethodNotAllowedException"}
        message = (
            exc.detail if exc.status_code != 404 else f"Requested resource is not found: {request.url.path}"
        )
        return error_response(exc.status_code, names.get(exc.status_code, "HttpException"), str(message))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None) or request.headers.get(REQUEST_ID_HEADER, "-")
        logger.exception(
            "Unexpected error in request %s %s (request id %s)", request.method, request.url.path, request_id
        )
        return error_response(
            500, "InternalServerException", f"Internal error; see the server log for request id {request_id}."
        )


def create_app(settings: IngressArgs, router: Router) -> FastAPI:
    """Build the inference API bound to ``router``."""
    app = FastAPI(
        title="raytorch inference API",
        description="TorchServe-compatible inference API served by Ray Serve.",
        version="0.1.0",
        openapi_url=None,  # served at /api-description instead, as TorchServe does
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_observability(app, settings, router)

    @app.get("/ping", summary="Health of the server and its models")
    async def ping() -> JSONResponse:
        unhealthy = router.unhealthy_models()
        if unhealthy:
            return JSONResponse({"status": "Unhealthy", "models": unhealthy}, status_code=500)
        return JSONResponse({"status": "Healthy"})

    @app.get("/api-description", summary="OpenAPI description of this API")
    async def api_description() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.options("/", summary="OpenAPI description of this API (TorchServe's form)")
    async def api_description_options() -> JSONResponse:
        return JSONResponse(app.openapi())

    async def authorize(request: Request) -> None:
        if settings.inference_auth:
            check_bearer(request.headers.get("authorization"), await router.token())

    async def _predict(model: str, version: str | None, request: Request) -> JSONResponse:
        await authorize(request)
        check_names(model, version)
        request.state.model, request.state.version = model, version  # for metrics and the access log
        inputs = await read_inputs(request, settings.max_body_bytes)
        # Several multipart 'data' fields are predicted together, so they can share a batch.
        try:
            answers = await asyncio.gather(
                *(router.predict(model, version, i.data, i.content_type) for i in inputs)
            )
        except RaytorchError as exc:
            request.state.version = getattr(exc, "model_version", None) or version
            raise
        request.state.answers = answers
        content = answers[0].result if len(answers) == 1 else [a.result for a in answers]
        headers = {
            "x-batch-size": ",".join(str(a.batch_size) for a in answers),
            "x-model-version": answers[0].version,
        }
        return JSONResponse(content, headers=headers)

    async def predictions(model_name: str, request: Request) -> JSONResponse:
        """Predict with the model's default version."""
        return await _predict(model_name, None, request)

    async def predictions_version(model_name: str, model_version: str, request: Request) -> JSONResponse:
        """Predict with one version of the model."""
        return await _predict(model_name, model_version, request)

    # PUT too: `curl -T image.jpg URL` (TorchServe's documented call) sends a PUT.
    for method in ("POST", "PUT"):
        app.add_api_route(
            "/predictions/{model_name}",
            predictions,
            methods=[method],
            operation_id=f"predict_{method.lower()}",
            summary="Predict with the default version",
        )
        app.add_api_route(
            "/predictions/{model_name}/{model_version}",
            predictions_version,
            methods=[method],
            operation_id=f"predict_version_{method.lower()}",
            summary="Predict with one version",
        )

    add_open_inference_routes(app, settings, router, authorize)
    return app
