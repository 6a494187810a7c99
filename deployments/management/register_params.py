"""TorchServe's register request (``POST /models?url=...``) and how it turns into model app args.

No Ray here: the management API validates the request (query parameters, or a JSON body as
TorchServe also accepts), and :func:`app_args` merges what the archive says with the request's
overrides into the typed args of a model application.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.common.settings import ModelAppArgs
from deployments.management.code_policy import check_registered_code
from handlers.archive import ArchiveModel, request_handler
from handlers.errors import BadInputError, validation_message
from handlers.handler_catalog import DEFAULT_HANDLERS, handler_class
from handlers.requirements import read_requirements
from handlers.spec import NAME_PATTERN, ModelSpec
from handlers.torchserve.names import TORCHSERVE_PREFIX, check_handler_file

URL_REQUIRED = "Parameter url is required."  # TorchServe's sentence: scripts grep it
# TorchServe's runtimes; only the Python one exists here ("LSP" is its C++ backend).
RUNTIMES = ("python", "python3")
# What TorchServe assumes when a registration does not say (RegisterModelRequest's defaults and
# its default_workers_per_model), next to ours: describe names each one a model got from us.
TORCHSERVE_DEFAULTS = {"minWorkers": 0, "batchSize": 1, "maxBatchDelay": 100}

# Words of the management API's paths (/models/{m}/all, /models/{m}/traffic): never versions.
RESERVED_VERSIONS = frozenset({"all", "traffic"})


def ms_to_s(milliseconds: float) -> float:
    """TorchServe counts batch delays in milliseconds; Serve in seconds."""
    return milliseconds / 1000


class RegisterParams(BaseModel):
    """TorchServe's register parameters (unknown ones are ignored, as TorchServe does)."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(None, max_length=2048, description="Archive in the model store, or a URL.")
    model_name: str | None = Field(None, pattern=NAME_PATTERN)
    handler: str | None = Field(None, max_length=512)
    runtime: str | None = Field(None, max_length=32, description="'python' (or 'python3').")
    batch_size: int | None = Field(None, ge=1, le=512)
    max_batch_delay: int | None = Field(None, ge=0, le=60_000, description="Milliseconds.")
    initial_workers: int | None = Field(None, ge=0, le=1024)
    synchronous: bool = True
    response_timeout: int | None = Field(None, ge=1, le=3600, description="Seconds.")
    startup_timeout: int | None = Field(
        None, ge=0, le=3600, description="Seconds a synchronous register waits for its workers."
    )
    num_cpus: float | None = Field(
        None, ge=0, le=1024, description="raytorch extension: CPUs reserved per replica (default: shared)."
    )
    num_gpus: float | None = Field(None, ge=0, le=64, description="raytorch extension: GPUs per replica.")
    pool: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="raytorch extension: register into this model pool (loaded on demand, no application).",
    )
    dedicated: bool = Field(
        False, description="raytorch extension: give the model its own application despite a default pool."
    )

    @classmethod
    def parse(cls, query: dict[str, Any], body: dict[str, Any] | None = None) -> RegisterParams:
        """Validate query parameters and an optional JSON body together; 400 naming bad fields.

        TorchServe reads either the query or the JSON body; here both count, and a parameter
        given twice with different values is refused rather than silently picking one.
        """
        merged = dict(query)
        for key, value in (body or {}).items():
            if key in merged and str(merged[key]).lower() != str(value).lower():
                raise BadInputError(
                    f"Parameter {key} is given in the query ({merged[key]!r}) and in the JSON body "
                    f"({value!r}) with different values"
                )
            merged[key] = value
        runtime = merged.get("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            if runtime == "LSP":
                raise BadInputError("Runtime LSP (TorchServe's C++ backend) is not supported: use 'python'")
            raise BadInputError(f"Invalid RuntimeType value: {runtime}")  # TorchServe's sentence
        try:
            params = cls.model_validate(merged)
        except ValidationError as exc:
            raise BadInputError(f"Invalid request: {validation_message(exc.errors())}") from None
        if params.url is None:
            raise BadInputError(URL_REQUIRED)
        return params


def app_args(
    found: ArchiveModel,
    params: RegisterParams,
    default_num_cpus: float = 0.0,
    trusted_modules: Sequence[str] = (),
    allow_archive_code: bool = True,
    max_queued_requests: int | None = None,
    install_py_dep_per_model: bool = False,
) -> ModelAppArgs:
    """Combine what the archive says with the request's overrides; 400 naming bad fields, or
    code the server does not let a registration run (deployments.management.code_policy)."""
    model = dict(found.model)
    if params.model_name:
        model["name"] = params.model_name
    if params.handler:
        model["handler"] = request_handler(params.handler, found)
    batching = dict(found.batching)
    if params.batch_size is not None:
        batching["max_batch_size"] = params.batch_size
    if params.max_batch_delay is not None:
        batching["batch_wait_timeout_s"] = ms_to_s(params.max_batch_delay)
    resources = {"num_cpus": default_num_cpus, **found.resources}
    if max_queued_requests is not None:  # TorchServe's job_queue_size (raytorch torchserve)
        resources.setdefault("max_queued_requests", max_queued_requests)
    if params.initial_workers is not None:
        resources["num_replicas"] = params.initial_workers
    if params.num_cpus is not None:
        resources["num_cpus"] = params.num_cpus
    if params.num_gpus is not None:
        resources["num_gpus"] = params.num_gpus
    if install_py_dep_per_model and found.requirements is not None:
        resources["pip_packages"] = read_requirements(found.requirements)  # 400 naming a bad line
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


def our_defaults(found: ArchiveModel, params: RegisterParams) -> list[str]:
    """Describe's names of the settings a registration got from raytorch's defaults where
    TorchServe's differ (neither the request nor the archive set them)."""
    used = []
    if params.initial_workers is None and "num_replicas" not in found.resources:
        used.append("minWorkers")
    if params.batch_size is None and "max_batch_size" not in found.batching:
        used.append("batchSize")
    if params.max_batch_delay is None and "batch_wait_timeout_s" not in found.batching:
        used.append("maxBatchDelay")
    return used


def default_note(name: str, args: ModelAppArgs) -> dict[str, Any]:
    """``{"value": ours, "torchserve": theirs}`` for one of :func:`our_defaults`' names."""
    ours = {
        "minWorkers": args.resources.num_replicas,
        "batchSize": args.batching.max_batch_size,
        "maxBatchDelay": round(args.batching.batch_wait_timeout_s * 1000),
    }[name]
    return {"value": ours, "torchserve": TORCHSERVE_DEFAULTS[name]}


def check_handler(spec: ModelSpec) -> None:
    """Import a custom handler now, so a missing dependency fails the registration, not
    requests. The default handlers ship with raytorch: they are not imported here, which
    keeps torch out of the management process (its start and memory) until a custom one comes.
    A TorchServe handler file is checked without running it (it imports torch and its model)."""
    if spec.handler.startswith(TORCHSERVE_PREFIX):
        check_handler_file(spec.handler, spec.base_dir)
    elif spec.handler not in DEFAULT_HANDLERS:
        handler_class(spec.handler, spec.base_dir)
