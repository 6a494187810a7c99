"""TorchServe's workflow management API (``/workflows``) as a FastAPI app, independent of Ray.

Same token, same request tolerance and error shape as ``/models``
(:mod:`deployments.management.api`): parameters in the query or a JSON body, typed (400 naming
a bad one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.common.auth import header_check
from deployments.common.http_errors import install_error_handlers
from deployments.management.register_params import URL_REQUIRED
from deployments.management.request_shape import TorchServeRequestShape, json_object
from handlers.errors import BadInputError, validation_message
from handlers.spec import NAME_PATTERN

MOUNT_PATH = "/workflows"
WorkflowName = Annotated[str, Path(pattern=NAME_PATTERN, description="Workflow name.")]


class Workflows(Protocol):
    """The operations behind the routes (deployments.management.workflows.WorkflowManager)."""

    async def register(self, url: str, name: str | None, startup_timeout: int | None) -> dict[str, str]: ...
    async def unregister(self, name: str) -> dict[str, str]: ...
    async def list(self, limit: int, start: int) -> dict[str, Any]: ...
    async def describe(self, name: str) -> list[dict[str, Any]]: ...


class RegisterWorkflowParams(BaseModel):
    """TorchServe's ``POST /workflows`` parameters (unknown ones ignored, as TorchServe does)."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(None, max_length=2048, description="The .war in the model store, or a URL.")
    workflow_name: str | None = Field(None, pattern=NAME_PATTERN, description="Overrides the archive's name.")
    response_timeout: int | None = Field(
        None, ge=1, le=3600, description="Seconds (accepted, as TorchServe)."
    )
    startup_timeout: int | None = Field(None, ge=1, le=3600, description="Seconds to wait for the models.")

    @classmethod
    def parse(cls, query: dict[str, Any], body: dict[str, Any] | None) -> RegisterWorkflowParams:
        """Query and JSON body together; 400 naming a bad parameter, or a missing url."""
        try:
            params = cls.model_validate({**query, **(body or {})})
        except ValidationError as exc:
            raise BadInputError(f"Invalid request: {validation_message(exc.errors())}") from None
        if not params.url:
            raise BadInputError(URL_REQUIRED)
        return params


def create_workflow_app(workflows: Workflows, token: str | Callable[[str | None], None]) -> FastAPI:
    """The /workflows routes bound to ``workflows``, protected by ``token`` (the bearer token,
    or a function that raises UnauthorizedError for a header without the right key)."""

    check = header_check(token)

    async def authorized(request: Request) -> None:
        check(request.headers.get("authorization"))

    app = FastAPI(
        title="raytorch workflow management API",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(authorized)],
    )
    install_error_handlers(app)
    app.add_middleware(TorchServeRequestShape)

    @app.post("/", summary="Register a workflow archive (.war)")
    async def register(request: Request) -> JSONResponse:
        body = None
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            body = json_object(await request.body())
        params = RegisterWorkflowParams.parse(dict(request.query_params), body)
        answer = await workflows.register(params.url or "", params.workflow_name, params.startup_timeout)
        return JSONResponse(answer)

    @app.get("/", summary="List workflows")
    async def list_workflows(limit: int = Query(100), next_page_token: int = Query(0)) -> JSONResponse:
        return JSONResponse(await workflows.list(limit, next_page_token))

    @app.get("/{workflow_name}", summary="Describe a workflow")
    async def describe(workflow_name: WorkflowName) -> JSONResponse:
        return JSONResponse(await workflows.describe(workflow_name))

    @app.delete("/{workflow_name}", summary="Unregister a workflow and its models")
    async def unregister(workflow_name: WorkflowName) -> JSONResponse:
        return JSONResponse(await workflows.unregister(workflow_name))

    return app
