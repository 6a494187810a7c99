"""Benchmark-only application: the model deployment answering HTTP itself, without the ingress.

Measures what the proxy -> ingress -> model hop costs against proxy -> model. Same
``ModelDeployment`` code (decode per request, ``@serve.batch``), same options as
``deployments.app.build_model``; only ``__call__`` is added. Not for production: no
TorchServe error mapping, one model per route.
"""

# Serve reads the builder's annotation at runtime to validate `args`: no string annotations.
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.messages import Rejected
from deployments.model import ModelDeployment
from deployments.settings import ModelAppArgs


class DirectModel(ModelDeployment.func_or_class):  # type: ignore[name-defined,misc]
    """``ModelDeployment`` plus an HTTP entry point."""

    async def __call__(self, request: Request) -> JSONResponse:
        answer = await self.predict(await request.body(), request.headers.get("content-type"))
        if isinstance(answer, Rejected):
            error = answer.error
            return JSONResponse({"code": error.status, "message": error.message}, error.status)
        return JSONResponse(answer.result, headers={"x-batch-size": str(answer.batch_size)})


def build_direct(args: ModelAppArgs) -> Application:
    """The model as an HTTP application of its own (set its route_prefix in the config)."""
    batching, resources = args.batching, args.resources
    return (
        serve.deployment(DirectModel)
        .options(
            name="DirectModel",
            num_replicas=resources.num_replicas,
            max_ongoing_requests=resources.max_ongoing_requests or 2 * batching.max_batch_size,
            ray_actor_options={"num_cpus": resources.num_cpus, "num_gpus": 0},
            user_config=batching.model_dump(),
        )
        .bind(args)
    )
