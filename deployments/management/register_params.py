"""TorchServe's register query (``POST /models?url=...``) and how it turns into model app args.

No Ray here: the management API validates the query, and :func:`app_args` merges what the
archive says with the request's overrides into the typed args of a model application.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.common.settings import ModelAppArgs
from deployments.management.code_policy import check_registered_code
from handlers.archive import ArchiveModel
from handlers.errors import BadInputError, validation_message
from handlers.registry import DEFAULT_HANDLERS, handler_class
from handlers.spec import NAME_PATTERN, ModelSpec

# Words of the management API's paths (/models/{m}/all, /models/{m}/traffic): never versions.
RESERVED_VERSIONS = frozenset({"all", "traffic"})


def ms_to_s(milliseconds: float) -> float:
    """TorchServe counts batch delays in milliseconds; Serve in seconds."""
    return milliseconds / 1000


class RegisterParams(BaseModel):
    """TorchServe's register query parameters (unknown ones are ignored, as TorchServe does)."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(..., min_length=1, max_length=2048)
    model_name: str | None = Field(None, pattern=NAME_PATTERN)
    handler: str | None = Field(None, max_length=512)
    batch_size: int | None = Field(None, ge=1, le=512)
    max_batch_delay: int | None = Field(None, ge=0, le=60_000, description="Milliseconds.")
    initial_workers: int | None = Field(None, ge=0, le=1024)
    synchronous: bool = True
    response_timeout: int | None = Field(None, ge=1, le=3600, description="Seconds.")
    num_cpus: float | None = Field(None, ge=0, le=1024, description="raytorch extension: CPUs per replica.")
    num_gpus: float | None = Field(None, ge=0, le=64, description="raytorch extension: GPUs per replica.")
    pool: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="raytorch extension: register into this model pool (loaded on demand, no application).",
    )
    dedicated: bool = Field(
        False, description="raytorch extension: give the model its own application despite a default pool."
    )


def app_args(
    found: ArchiveModel,
    params: RegisterParams,
    default_num_cpus: float = 0.5,
    trusted_modules: Sequence[str] = (),
    allow_archive_code: bool = True,
) -> ModelAppArgs:
    """Combine what the archive says with the request's overrides; 400 naming bad fields, or
    code the server does not let a registration run (deployments.management.code_policy)."""
    model = dict(found.model)
    if params.model_name:
        model["name"] = params.model_name
    if params.handler:
        model["handler"] = params.handler
    batching = dict(found.batching)
    if params.batch_size is not None:
        batching["max_batch_size"] = params.batch_size
    if params.max_batch_delay is not None:
        batching["batch_wait_timeout_s"] = ms_to_s(params.max_batch_delay)
    resources = {"num_cpus": default_num_cpus, **found.resources}
    if params.initial_workers is not None:
        resources["num_replicas"] = params.initial_workers
    if params.num_cpus is not None:
        resources["num_cpus"] = params.num_cpus
    if params.num_gpus is not None:
        resources["num_gpus"] = params.num_gpus
    try:
        args = ModelAppArgs.model_validate({"model": model, "batching": batching, "resources": resources})
    except ValidationError as exc:
        raise BadInputError(f"Invalid model settings: {validation_message(exc.errors())}") from None
    if args.model.version in RESERVED_VERSIONS:
        raise BadInputError(
            f"Version {args.model.version!r} is reserved by the management API: choose another"
        )
    check_registered_code(args.model, trusted_modules, allow_archive_code)  # before any import
    check_handler(args.model)
    return args


def check_handler(spec: ModelSpec) -> None:
    """Import a custom handler now, so a missing dependency fails the registration, not
    requests. The default handlers ship with raytorch: they are not imported here, which
    keeps torch out of the management process (its start and memory) until a custom one comes."""
    if spec.handler not in DEFAULT_HANDLERS:
        handler_class(spec.handler, spec.base_dir)
