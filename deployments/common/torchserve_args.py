"""TorchServe's deployment settings as app args: ``IngressArgs.torchserve``, ``ManagementArgs.torchserve``.

Our own configs serve every API on one port (``http_options``). ``raytorch torchserve`` sets
``torchserve:`` instead, and the ingress replica then listens as TorchServe does: inference,
management and metrics each on its own address (HTTP or HTTPS), gRPC inference and management
on theirs, every listener answering only its own API's paths (404 for the others), with
TorchServe's three keys (:mod:`deployments.common.ts_keys`) and CORS.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from handlers.spec import StrictModel

Api = Literal["inference", "management", "metrics"]


class TlsFiles(StrictModel):
    """A PEM certificate chain and its private key (TorchServe's certificate_file, private_key_file)."""

    certificate_file: str = Field(..., description="PEM certificate chain, server certificate first.")
    private_key_file: str = Field(..., description="PEM private key (PKCS#8 or traditional OpenSSL).")


class Listener(StrictModel):
    """One HTTP(S) listener serving one API, or several when TorchServe's config gives them the
    same address."""

    apis: list[Api] = Field(..., min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(..., ge=0, le=65535)
    tls: TlsFiles | None = Field(None, description="HTTPS with these files; None: plain HTTP.")


class GrpcListener(StrictModel):
    """One gRPC listener: inference (OIP and TorchServe's InferenceAPIsService) or management."""

    api: Literal["inference", "management"]
    host: str = "127.0.0.1"
    port: int = Field(..., ge=0, le=65535)
    tls: TlsFiles | None = None


class Cors(StrictModel):
    """TorchServe's cors_allowed_origin, cors_allowed_methods and cors_allowed_headers."""

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)


class TorchServeFront(StrictModel):
    """How the ingress listens and checks keys in TorchServe's layout."""

    listeners: list[Listener] = Field(..., min_length=1)
    grpc_listeners: list[GrpcListener] = Field(default_factory=list)
    key_file: str | None = Field(
        None, description="Absolute path of TorchServe's key_file.json; None: no token authorization."
    )
    token_expiration_min: float = Field(60.0, gt=0, description="Lifetime of a regenerated key.")
    cors: Cors | None = None

    @model_validator(mode="after")
    def _distinct(self) -> TorchServeFront:
        seen: dict[int, str] = {}
        for listener in [*self.listeners, *self.grpc_listeners]:
            apis = listener.apis if isinstance(listener, Listener) else [listener.api]
            kind = f"the {'gRPC ' if isinstance(listener, GrpcListener) else ''}{'+'.join(apis)} listener"
            if listener.port and listener.port in seen:
                raise ValueError(f"port {listener.port} is given to both {seen[listener.port]} and {kind}")
            seen[listener.port] = kind
        return self


class StartupModel(StrictModel):
    """One entry of TorchServe's ``load_models`` (``--models``), with its ``models={...}`` settings."""

    url: str = Field(..., description="An archive of the model store (file name) or a URL.")
    model_name: str | None = Field(None, description="The name before '=' (default: the archive's).")
    initial_workers: int | None = Field(None, ge=0, description="models={...}'s minWorkers.")
    max_workers: int | None = Field(None, ge=1, description="models={...}'s maxWorkers (autoscaling).")
    batch_size: int | None = Field(None, ge=1)
    max_batch_delay: int | None = Field(None, ge=0, description="Milliseconds.")
    response_timeout: int | None = Field(None, ge=1, description="Seconds.")


class TorchServeManagement(StrictModel):
    """TorchServe's settings of the management API (``ManagementArgs.torchserve``)."""

    key_file: str | None = Field(
        None, description="Absolute path of TorchServe's key_file.json: /models needs its management key."
    )
    token_expiration_min: float = Field(60.0, gt=0)
    model_api: bool = Field(
        False,
        description=(
            "TorchServe's enable_model_api: False (its default) answers 405 to registering and "
            "unregistering over the API; startup models (load_models) are registered all the same."
        ),
    )
    startup_models: list[StartupModel] = Field(default_factory=list)
    default_workers: int | None = Field(
        None, ge=0, description="default_workers_per_model: workers of a registration that names none."
    )
    job_queue_size: int | None = Field(
        None, ge=1, description="Requests waiting for a model's replicas before 503 (max_queued_requests)."
    )
    default_response_timeout: int | None = Field(
        None, ge=1, description="Seconds (describe's responseTimeout)."
    )
