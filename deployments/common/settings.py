"""Typed ``args:`` of the Serve applications in ``configs/*.yaml``: one place for them.

``serve run`` validates these through the typed builders in ``deployments.app`` before
anything starts, so a typo is reported with the field's name. No Ray import here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from handlers.errors import ConfigError
from handlers.options import validate_options
from handlers.spec import ModelSpec, StrictModel


class BatchingConfig(StrictModel):
    """Dynamic batching; also changeable at runtime through the deployment's user_config."""

    max_batch_size: int = Field(8, ge=1, le=512, description="Largest batch the model runs.")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description=(
            "How long a partial batch waits for more requests. With wait_for_idle_model the "
            "requests that arrive while a batch runs fill the next one, so no wait is needed "
            "(measured: concurrency-1 p50 98 -> 80 ms, concurrency-16 throughput +12%)."
        ),
    )
    wait_for_idle_model: bool = Field(
        True,
        description=(
            "Hold decoded requests while a batch runs, so the next batch takes all of them. "
            "Without it Serve 2.60 forms the next batch during the running one from only "
            "batch_wait_timeout_s of arrivals, and batches stay near 1-2 under any load."
        ),
    )


class ResourcesConfig(StrictModel):
    """Replicas and the Ray resources each one takes."""

    num_replicas: int = Field(1, ge=0, le=1024, description="Replicas of this model version.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica, e.g. 0.5 to share one GPU.")
    gpu_policy: Literal["auto", "required"] = Field(
        "auto",
        description=(
            "'auto': when the cluster has no GPU, run on CPU and say so instead of waiting "
            "forever for one. 'required': always ask Ray for the GPU (for autoscaling GPU nodes)."
        ),
    )
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Per-replica concurrency limit; default 8 x max_batch_size."
    )
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests waiting for a replica before 503 (-1: unbounded)."
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Autoscale between num_replicas and this many replicas (Ray Serve autoscaling).",
    )

    @model_validator(mode="after")
    def _range(self) -> ResourcesConfig:
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below num_replicas ({self.num_replicas})"
            )
        return self


class ModelAppArgs(StrictModel):
    """``args`` of one model application (``deployments.app:build_model``)."""

    model: ModelSpec = Field(..., description="What to load and how to preprocess.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _handler_options(self) -> ModelAppArgs:
        # Checked when `serve run` builds the app (torch-free), not when a replica starts:
        # a typo such as `scor_threshold` fails at once, naming the field.
        try:
            validate_options(self.model.handler, self.model.options)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self

    @model_validator(mode="after")
    def _enough_concurrency(self) -> ModelAppArgs:
        limit = self.resources.max_ongoing_requests
        if limit is not None and limit < self.batching.max_batch_size:
            raise ValueError(
                f"resources.max_ongoing_requests ({limit}) is below batching.max_batch_size "
                f"({self.batching.max_batch_size}): batches could never fill"
            )
        return self


class ManagementArgs(StrictModel):
    """``args`` of the management application (``deployments.app:build_management``)."""

    state_dir: str = Field(
        ".raytorch", description="Registry, key file and extracted archives (env RAYTORCH_STATE_DIR wins)."
    )
    model_store: str = Field(
        "model_store", description="Where `url=` archives are looked up (env RAYTORCH_MODEL_STORE wins)."
    )
    allowed_urls: list[str] = Field(
        default_factory=list, description="Regexes of remote archive URLs that may be fetched."
    )
    register_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="How long a synchronous register waits for readiness."
    )
    propagation_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description=(
            "Time for every ingress to see a routing change (> its discovery_interval_s): "
            "set-default returns after it, and unregister waits it before deleting the app."
        ),
    )
    default_num_cpus: float = Field(
        0.0,
        ge=0,
        description=(
            "CPUs Ray reserves per replica of a registered model unless `num_cpus=` is given. "
            "0 (the default): registered models share the node's cores the way TorchServe's "
            "workers do; each replica's torch threads follow how many replicas are busy. GPUs "
            "(`num_gpus=`) are always reserved exactly."
        ),
    )
    wait_for_resources: bool = Field(
        False,
        description=(
            "Deploy even when the cluster lacks the CPUs/GPUs right now (autoscaling clusters); "
            "by default such a registration is refused at once with what is missing."
        ),
    )


class IngressArgs(StrictModel):
    """``args`` of the HTTP ingress application (``deployments.app:build_ingress``)."""

    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest request body accepted (413 above)."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline of one HTTP prediction (504 after it)."
    )
    discovery_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often the ingress refreshes the model table."
    )
    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description=(
            "HTTP requests one ingress replica handles at once. The ingress only awaits the "
            "models, so this must stay well above the models' batch sizes: Serve's default of 5 "
            "capped every model's batches at 5 whatever the client concurrency."
        ),
    )
    inference_auth: bool = Field(
        False, description="Require the management bearer token on inference routes too."
    )
    access_log: Literal["text", "json", "off"] = Field(
        "text", description="One line per request to stdout and <log_dir>/access.log."
    )
    log_dir: str = Field(".raytorch/logs", description="Where access.log goes (env RAYTORCH_LOG_DIR wins).")
