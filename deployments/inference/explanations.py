"""Explanations: ``POST /explanations/{model}[/{version}]`` (TorchServe) and the explanation
path of KServe v1's ``:explain`` (:mod:`deployments.inference.kserve_v1`).

The input is sent as for ``/predictions`` (raw body or multipart ``data`` fields); the
replica's handler explains it (:mod:`handlers.explain`, computed chunk by chunk between
prediction batches). Query parameters: ``target`` (class index or label; default: the
model's top class), ``n_steps`` (Integrated Gradients steps, up to the model's
``explain.max_steps``) and ``format=png`` (a heat map; ``Accept: image/png`` asks the same).
The answer is the handler's explanation as JSON (an image: ``[C][H][W]`` nested lists, as
TorchServe answers; a text: ``{"words", "importances", "target"}``), or the PNG.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response

from deployments.inference.data_plane import DataPlane
from deployments.inference.request_body import read_body, split_inputs
from deployments.inference.telemetry import record_of
from handlers.errors import BadInputError
from handlers.explain_request import ExplainRequest
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

ModelName = Annotated[str, Path(pattern=NAME_PATTERN)]
Version = Annotated[str, Path(pattern=VERSION_PATTERN)]
MAX_STEPS = 1000  # the most any model may allow (ExplainSettings.max_steps); each model has its own
PNG = "image/png"


def explain_request(query: dict[str, str], accept: str | None) -> ExplainRequest:
    """The explanation a request asks for, from its query parameters and Accept header."""
    steps = query.get("n_steps")
    n_steps = None
    if steps is not None:
        if not steps.isdigit() or not 1 <= int(steps) <= MAX_STEPS:
            raise BadInputError(f"n_steps must be a whole number from 1 to {MAX_STEPS}, not {steps[:40]!r}")
        n_steps = int(steps)
    form = query.get("format", "").lower()
    if form not in ("", "json", "png"):
        raise BadInputError(f"format must be json or png, not {form[:40]!r}")
    heatmap = form == "png" or (not form and PNG in (accept or "").lower())
    return ExplainRequest(target=query.get("target") or None, n_steps=n_steps, heatmap=heatmap)


def add_explanation_routes(
    app: FastAPI,
    plane: DataPlane,
    authorize: Callable[[str | None], Awaitable[None]],
    max_body_bytes: int,
) -> None:
    """TorchServe's ``/explanations`` routes on the inference ``app``."""

    async def explain(request: Request, model: str, version: str | None) -> Response:
        record = record_of(request.scope)
        record.protocol = "torchserve"
        await authorize(request.headers.get("authorization"))
        wanted = explain_request(dict(request.query_params), request.headers.get("accept"))
        body = await read_body(request.receive, request.headers.get("content-length"), max_body_bytes)
        inputs = split_inputs(body, request.headers.get("content-type"))
        answers = await plane.explain(record, model, version, inputs, wanted)
        headers = {"x-model-version": answers[0].version}
        if wanted.heatmap:
            if len(answers) != 1:
                raise BadInputError("A heat map answers one input; send one, or ask for JSON")
            return Response(answers[0].result, media_type=PNG, headers=headers)
        content = answers[0].result if len(answers) == 1 else [a.result for a in answers]
        return JSONResponse(content, headers=headers)

    # POST and PUT (curl -T), as /predictions: four routes, so each has its own OpenAPI operation.
    @app.post("/explanations/{model_name}", summary="Explain an input with the default version")
    async def explain_default(model_name: ModelName, request: Request) -> Response:
        return await explain(request, model_name, None)

    @app.put("/explanations/{model_name}", summary="Explain an input with the default version (PUT)")
    async def explain_default_put(model_name: ModelName, request: Request) -> Response:
        return await explain(request, model_name, None)

    @app.post("/explanations/{model_name}/{model_version}", summary="Explain an input with one version")
    async def explain_version(model_name: ModelName, model_version: Version, request: Request) -> Response:
        return await explain(request, model_name, model_version)

    @app.put("/explanations/{model_name}/{model_version}", summary="Explain an input with one version (PUT)")
    async def explain_version_put(
        model_name: ModelName, model_version: Version, request: Request
    ) -> Response:
        return await explain(request, model_name, model_version)
