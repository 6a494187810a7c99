"""Typed ``args:`` of the Serve applications in ``configs/*.yaml``: one place for them.

``serve run`` validates these through the typed builders in ``deployments.app`` before
anything starts, so a typo is reported with the field's name. No Ray import here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deployments.common.torchserve_args import TorchServeFront
from handlers.errors import ConfigError
from handlers.options import validate_options
from handlers.spec import NAME_PATTERN, ModelSpec, StrictModel


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
    pip_packages: list[str] = Field(
        default_factory=list,
        description=(
            "Python packages for this model's replicas only: a TorchServe archive's "
            "requirements.txt with install_py_dep_per_model (installed at registration into "
            "py_deps_dir). Set in a Serve config without py_deps_dir, they go through Ray's "
            "runtime_env pip instead (a virtualenv per replica node, built at replica start)."
        ),
    )
    py_deps_dir: str | None = Field(
        None,
        description=(
            "A folder of installed packages put first on this model's replicas' PYTHONPATH "
            "(set by registration with install_py_dep_per_model)."
        ),
    )

    @model_validator(mode="after")
    def _range(self) -> ResourcesConfig:
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below num_replicas ({self.num_replicas})"
            )
        return self


def _check_batches_can_fill(resources: ResourcesConfig, batching: BatchingConfig) -> None:
    """A replica that accepts fewer requests than a batch holds could never fill one."""
    limit = resources.max_ongoing_requests
    if limit is not None and limit < batching.max_batch_size:
        raise ValueError(
            f"resources.max_ongoing_requests ({limit}) is below batching.max_batch_size "
            f"({batching.max_batch_size}): batches could never fill"
        )


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
        _check_batches_can_fill(self.resources, self.batching)
        return self


class PoolArgs(StrictModel):
    """``args`` of a model pool (``deployments.app:build_pool``): one deployment whose replicas
    load registered models on demand, by model id, and evict the least recently used ones."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Pool name, as in POST /models?pool=NAME.")
    memory_budget_mb: float = Field(
        1024.0,
        gt=0,
        description=(
            "Per replica: models stay loaded while their estimated memory (weights and buffers, "
            "plus model_overhead_mb each) fits; the least recently used ones are evicted first."
        ),
    )
    model_overhead_mb: float = Field(
        0.25,
        ge=0,
        description=(
            "Memory counted per loaded model besides its tensors: the handler, the module objects "
            "and the allocator's slack (measured: 0.02 MB for a tiny CNN; label lists and larger "
            "handlers take more)."
        ),
    )
    max_models_per_replica: int | None = Field(
        None, ge=1, description="Also evict once a replica holds this many models (None: memory only)."
    )
    cold_loads_per_s: float = Field(
        4.0,
        gt=0,
        description=(
            "Per replica: cold loads (loading a model it does not hold) started per second on "
            "average, after cold_load_burst at once. A cold load runs on the inference thread "
            "that every model of the replica shares; a request that would exceed this gets 503 "
            "with Retry-After at once, and the models the replica holds keep answering."
        ),
    )
    cold_load_burst: int = Field(
        8,
        ge=1,
        description=(
            "Per replica: cold loads that may start at once after a quiet spell, and the most "
            "that may wait for the inference thread (more: 503 with Retry-After)."
        ),
    )
    torch_threads: int | None = Field(
        1,
        ge=1,
        description=(
            "torch intra-op threads per batch (None: shared among the machine's busy replicas, as for "
            "dedicated models). Pools are for small models, where more threads cost more than they "
            "give (measured with the tiny CNN on a busy 2-core machine: a load 20 ms with 2 threads, "
            "1.4 ms with 1; a forward 10 ms against 0.2 ms): add replicas instead."
        ),
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Batching of every model in the pool (each batch holds one model's requests).",
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig,
        description=(
            "Replicas of the pool; with max_replicas, Serve autoscales it on the total load of all "
            "its models."
        ),
    )

    @model_validator(mode="after")
    def _serving(self) -> PoolArgs:
        if self.resources.num_replicas < 1:
            raise ValueError(
                "a pool needs resources.num_replicas >= 1: its models have no replica of their own"
            )
        _check_batches_can_fill(self.resources, self.batching)
        return self


class IngressArgs(StrictModel):
    """``args`` of the HTTP ingress application (``deployments.app:build_ingress``)."""

    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest request body accepted (413 above)."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline of one HTTP prediction (504 after it)."
    )
    discovery_interval_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Safety poll of Serve's status. Changes reach the ingress sooner: the management app "
            "announces them, lookups that miss refresh at once, and health routes never read a "
            "table older than a second."
        ),
    )
    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description=(
            "Requests one ingress replica handles at once, HTTP and gRPC each (health probes "
            "not counted); over it a request is answered 503 with Retry-After at once (gRPC: "
            "RESOURCE_EXHAUSTED). The ingress only awaits the models, so this must stay well "
            "above the models' batch sizes: Serve's default of 5 capped every model's batches at "
            "5 whatever the client concurrency."
        ),
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description=(
            "Open HTTP connections one ingress replica keeps (idle keep-alive ones included) "
            "when it owns the listener; a request arriving over it is answered 503. A connection "
            "that sends no complete request head within head_timeout_s is closed, so idle or "
            "trickling clients cannot fill it."
        ),
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "Time a new connection has to send its first request line and headers (the connection "
            "is closed after it, without an answer). Between requests, the keep-alive time (75 s) "
            "applies instead."
        ),
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Time a client has to send a request's whole body, counted from its headers; 408 "
            "after it. The default lets a max_body_bytes body of 20 MiB arrive at 3 Mbit/s."
        ),
    )
    inference_auth: bool = Field(
        False,
        description=(
            "Require the management bearer token on inference routes and RPCs too (health "
            "probes stay open but name no model without it)."
        ),
    )
    grpc: bool = Field(
        False,
        description=(
            "Serve gRPC (OIP's GRPCInferenceService, TorchServe's InferenceAPIsService and "
            "ManagementAPIsService) on grpc_options.port, bound to http_options.host."
        ),
    )
    access_log: Literal["text", "json", "off"] = Field(
        "text", description="One line per request to <log_dir>/access.log (and the console)."
    )
    access_log_console: bool = Field(
        True, description="Also print each access-log line on the console (`make serve`'s terminal)."
    )
    group_calls: bool = Field(
        True,
        description=(
            "Send the inputs that arrive together for one model version in one Serve call "
            "(deployments/inference/call_groups.py); off sends one call per input."
        ),
    )
    log_dir: str = Field(".raytorch/logs", description="Where access.log goes (env RAYTORCH_LOG_DIR wins).")
    torchserve: TorchServeFront | None = Field(
        None,
        description=(
            "Set by `raytorch torchserve`: listen as TorchServe does (separate inference, management "
            "and metrics addresses, TLS, its three keys, CORS) instead of on http_options alone."
        ),
    )
