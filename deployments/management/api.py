"""TorchServe's management API (``/models``) as a FastAPI app, independent of Ray.

Every route needs ``Authorization: Bearer <token>``. Parameters are typed: a wrong type or
range is a 400 naming the parameter (TorchServe silently accepts ``min_worker=abc``), and model
names and versions are checked by their path patterns before any lookup. What TorchServe's
clients send is accepted as TorchServe accepts it: empty query values mean the default,
a trailing slash is ignored, and registration parameters may come as a JSON body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.common.auth import header_check
from deployments.common.http_errors import install_error_handlers
from deployments.management.register_params import RegisterParams
from deployments.management.request_shape import TorchServeRequestShape, json_object, query_parameters
from handlers.errors import METHOD_NOT_ALLOWED, BadInputError, MethodNotAllowedError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MOUNT_PATH = "/models"  # the app's Serve route prefix; its own paths are relative to it

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="Model name.")]
Version = Annotated[str, Path(pattern=VERSION_PATTERN, description="Model version.")]
VersionOrAll = Annotated[
    str, Path(pattern=VERSION_PATTERN, description="Model version, or 'all' to describe every version.")
]


class Manager(Protocol):
    """The operations behind the routes (deployments.management.manager.ModelManager)."""

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]: ...
    async def scale(
        self, model: str, version: str | None, low: int, high: int, synchronous: bool
    ) -> tuple[int, dict]: ...
    async def set_default(self, model: str, version: str) -> dict[str, str]: ...
    async def unregister(self, model: str, version: str | None) -> dict[str, str]: ...
    async def describe(
        self, model: str, version: str | None, customized: bool = False
    ) -> list[dict[str, Any]]: ...
    async def list_models(self) -> list[dict[str, str]]: ...
    @property
    def traffic(self) -> Traffic: ...


class Traffic(Protocol):
    """Traffic control between versions (deployments.management.traffic.TrafficControl)."""

    async def get(self, model: str) -> dict[str, Any]: ...
    async def set(
        self, model: str, split: str | None, shadow: str | None, shadow_percent: float
    ) -> dict[str, Any]: ...
    async def clear(self, model: str) -> dict[str, Any]: ...


class TrafficParams(BaseModel):
    """``PUT /models/{model}/traffic``: a weighted split and/or a shadow version."""

    model_config = ConfigDict(extra="ignore")

    split: str | None = Field(
        None, max_length=2048, description="version:weight,... e.g. 1.0:90,2.0:10 (weights are relative)."
    )
    shadow: str | None = Field(
        None, pattern=VERSION_PATTERN, description="A version that also gets a copy of the requests."
    )
    shadow_percent: float = Field(100.0, gt=0, le=100, description="Percent of the requests copied.")


class ScaleParams(BaseModel):
    """TorchServe's scale query: a fixed worker count, or a min/max autoscaling range."""

    model_config = ConfigDict(extra="ignore")

    min_worker: int = Field(1, ge=0, le=1024)
    max_worker: int | None = Field(None, ge=1, le=1024)
    synchronous: bool = False


def page_bounds(limit: int, next_page_token: int) -> tuple[int, int]:
    """TorchServe's paging rules: a limit below 1 means the default page, a larger one is
    capped, and a negative token starts at the beginning."""
    limit = DEFAULT_PAGE if limit < 1 else min(limit, MAX_PAGE)
    return limit, max(0, next_page_token)


# TorchServe answers 405 with its fixed sentence when enable_model_api is off; we add what to do.
MODEL_API_OFF = (
    f"{METHOD_NOT_ALLOWED} Registering and unregistering models is disabled: start with "
    "--enable-model-api or set enable_model_api=true."
)


def create_management_app(
    manager: Manager,
    token: str | Callable[[str | None], None],
    enable_model_api: bool = True,
    register_defaults: dict[str, int] | None = None,
) -> FastAPI:
    """The /models routes bound to ``manager``, protected by ``token`` (the bearer token, or a
    function that raises UnauthorizedError for a header without the right key).
    ``enable_model_api`` False answers 405 to register and unregister (TorchServe's enable_model_api=false);
    ``register_defaults`` fills register parameters a request leaves out."""

    check = header_check(token)

    async def authorized(request: Request) -> None:
        check(request.headers.get("authorization"))

    def model_api_enabled() -> None:
        if not enable_model_api:
            raise MethodNotAllowedError(MODEL_API_OFF)

    app = FastAPI(
        title="raytorch management API",
        version="0.1.0",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(authorized)],
    )
    install_error_handlers(app)
    app.add_middleware(TorchServeRequestShape)

    @app.post(
        "/",
        summary="Register a model archive",
        description="Parameters in the query, or in a JSON object body (or both, if they agree).",
        openapi_extra={"parameters": query_parameters(RegisterParams)},
    )
    async def register(request: Request) -> JSONResponse:
        model_api_enabled()
        body = None
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            body = json_object(await request.body())
        params = RegisterParams.parse(dict(request.query_params), body)
        unset = {k: v for k, v in (register_defaults or {}).items() if getattr(params, k) is None}
        params = params.model_copy(update=unset)
        status, answer = await manager.register(params)
        return JSONResponse(answer, status_code=status)

    @app.get("/", summary="List models")
    async def list_models(limit: int = Query(DEFAULT_PAGE), next_page_token: int = Query(0)) -> JSONResponse:
        limit, start = page_bounds(limit, next_page_token)
        models = await manager.list_models()
        body: dict[str, Any] = {"models": models[start : start + limit]}
        if start + limit < len(models):
            body = {"nextPageToken": str(start + limit), **body}
        return JSONResponse(body)

    # Before the /{model_name}/{model_version} routes: "traffic" is a reserved version word.
    @app.get("/{model_name}/traffic", summary="Traffic split and shadow of a model")
    async def get_traffic(model_name: ModelName) -> JSONResponse:
        return JSONResponse(await manager.traffic.get(model_name))

    @app.put("/{model_name}/traffic", summary="Split traffic between versions, or shadow one")
    async def set_traffic(model_name: ModelName, params: TrafficParams = Depends()) -> JSONResponse:  # noqa: B008
        body = await manager.traffic.set(model_name, params.split, params.shadow, params.shadow_percent)
        return JSONResponse(body)

    @app.delete("/{model_name}/traffic", summary="End a split or shadow: back to the default")
    async def clear_traffic(model_name: ModelName) -> JSONResponse:
        return JSONResponse(await manager.traffic.clear(model_name))

    @app.get("/{model_name}", summary="Describe the default version")
    async def describe(model_name: ModelName, customized: bool = False) -> JSONResponse:
        return JSONResponse(await manager.describe(model_name, None, customized))

    @app.get("/{model_name}/{model_version}", summary="Describe a version, or all of them")
    async def describe_version(
        model_name: ModelName, model_version: VersionOrAll, customized: bool = False
    ) -> JSONResponse:
        return JSONResponse(await manager.describe(model_name, model_version, customized))

    async def _scale(model: str, version: str | None, params: ScaleParams) -> JSONResponse:
        high = params.max_worker if params.max_worker is not None else params.min_worker
        if high < params.min_worker:
            raise BadInputError("max_worker cannot be less than min_worker.")  # TorchServe's sentence
        status, body = await manager.scale(model, version, params.min_worker, high, params.synchronous)
        return JSONResponse(body, status_code=status)

    @app.put("/{model_name}", summary="Scale the default version")
    async def scale(model_name: ModelName, params: ScaleParams = Depends()) -> JSONResponse:  # noqa: B008
        return await _scale(model_name, None, params)

    @app.put("/{model_name}/{model_version}", summary="Scale one version")
    async def scale_version(
        model_name: ModelName,
        model_version: Version,
        params: ScaleParams = Depends(),  # noqa: B008
    ) -> JSONResponse:
        return await _scale(model_name, model_version, params)

    @app.put("/{model_name}/{model_version}/set-default", summary="Set the default version")
    async def set_default(model_name: ModelName, model_version: Version) -> JSONResponse:
        return JSONResponse(await manager.set_default(model_name, model_version))

    @app.delete("/{model_name}", summary="Unregister the default version (its last one)")
    async def unregister(model_name: ModelName) -> JSONResponse:
        model_api_enabled()
        return JSONResponse(await manager.unregister(model_name, None))

    @app.delete("/{model_name}/{model_version}", summary="Unregister one version")
    async def unregister_version(model_name: ModelName, model_version: Version) -> JSONResponse:
        model_api_enabled()
        return JSONResponse(await manager.unregister(model_name, model_version))

    async def _model_api(model: str, version: str | None) -> JSONResponse:
        await manager.describe(model, version)  # 404 for unknown models and versions
        return JSONResponse(model_management_api(app, model))

    @app.options("/{model_name}", summary="OpenAPI description of this model's management API")
    async def model_api(model_name: ModelName) -> JSONResponse:
        return await _model_api(model_name, None)

    @app.options("/{model_name}/{model_version}", summary="OpenAPI description of one version's API")
    async def model_version_api(model_name: ModelName, model_version: Version) -> JSONResponse:
        return await _model_api(model_name, model_version)

    return app


def model_management_api(app: FastAPI, model: str) -> dict[str, Any]:
    """The OpenAPI document of the routes that manage one model (TorchServe's answer to
    ``OPTIONS /models/{m}``), cut from this app's own document with the name filled in."""
    schema = app.openapi()
    paths = {}
    for path, operations in schema["paths"].items():
        if "{model_name}" not in path:
            continue
        kept = {}
        for method, operation in operations.items():
            if method == "options":
                continue
            parameters = [p for p in operation.get("parameters", []) if p.get("name") != "model_name"]
            kept[method] = {**operation, "parameters": parameters}
        paths[MOUNT_PATH + path.replace("{model_name}", model)] = kept
    return {
        "openapi": schema.get("openapi", "3.1.0"),
        "info": {"title": f"RESTful Management API for: {model}", "version": schema["info"]["version"]},
        "paths": paths,
        "components": schema.get("components", {}),
    }
