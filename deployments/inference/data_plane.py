"""The data plane: what every inference protocol asks of the server, answered once.

TorchServe's REST API (``http_entry.py``, ``routes.py``, ``explanations.py``,
``streaming.py``), KServe v1 (``kserve_v1.py``), the Open Inference Protocol over REST
(``open_inference.py``) and gRPC (``grpc_oip.py``), and TorchServe's gRPC inference service
(``grpc_torchserve.py``) only decode their requests and encode these answers: liveness,
server readiness, a model's readiness and metadata, inference (one answer per input, the
inputs of a request fanned out so they can share a batch), explanations and streamed answers.
Each fills the request's telemetry record with the model and version it went to, so every
protocol is counted the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from deployments.common.messages import Answer, Rejected
from deployments.common.model_table import ModelTable, ModelVersionState
from deployments.inference.oip_infer import InferRequest, InferResult, infer_tensors
from deployments.inference.request_body import RequestInput
from deployments.inference.telemetry import RequestRecord
from handlers.errors import ModelNotReadyError, RaytorchError
from handlers.explain_request import ExplainRequest
from handlers.tensor_data import TensorRequest

INPUT_ERRORS = (400, 413, 415)  # statuses that blame one input; their message then names it
SERVER_NAME = "raytorch"
# What the server metadata lists: Triton's names for the OIP extensions we implement, then ours
# (the other APIs this server speaks).
EXTENSIONS = (
    "binary_tensor_data",  # REST: raw tensor data after the JSON (Triton's extension)
    "parameters",  # binary_data, binary_data_output, binary_data_size, content_type
    "torchserve_inference",  # TorchServe's inference API, REST and gRPC (InferenceAPIsService)
    "torchserve_management",  # TorchServe's management API, REST and gRPC (ManagementAPIsService)
    "kserve_v1",  # KServe v1: /v1/models/{m}:predict
    "model_versions",  # /versions/{v} on every model route; /predictions/{m}/{v}
)


class Router(Protocol):
    """Where the data plane finds versions and sends inputs (ServeRouter; fakes in tests)."""

    async def resolve(self, model: str, version: str | None) -> ModelVersionState: ...
    def labels(self, model: str, version: str | None) -> tuple[str, str]: ...
    async def readiness(
        self, model: str, version: str | None
    ) -> tuple[ModelVersionState, ModelNotReadyError | None]: ...
    async def versions(self, model: str) -> list[str]: ...
    async def health_table(self) -> ModelTable: ...
    async def pool_reports(self) -> dict[str, list[dict]]: ...
    async def signature(
        self, model: str, version: str | None
    ) -> tuple[ModelVersionState, dict[str, Any]]: ...
    async def predict(
        self,
        state: ModelVersionState,
        body: bytes | TensorRequest,
        content_type: str | None,
        request_id: str = "",
    ) -> Answer: ...
    async def explain(
        self, state: ModelVersionState, items: list[tuple[bytes, str | None]], request: ExplainRequest
    ) -> list[Answer | Rejected]: ...
    def stream(
        self, state: ModelVersionState, body: bytes, content_type: str | None
    ) -> AsyncIterator[Any]: ...


@dataclass(frozen=True)
class ModelReadiness:
    """Whether a model version can serve now; ``error`` says why not (with its Retry-After)."""

    model: str
    version: str
    error: ModelNotReadyError | None

    @property
    def ready(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ModelMetadata:
    """A model's versions, and the inputs and outputs its version declares."""

    name: str
    versions: list[str]
    version: str
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    handler: str


def server_version() -> str:
    """This server's version (the installed package's, or the source tree's)."""
    try:
        return importlib.metadata.version("raytorch")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


class DataPlane:
    """Live, ready, metadata, infer, explain and stream, for every protocol.

    ``in_flight`` is the Prometheus gauge of inferences in progress (label ``model_name``).
    """

    def __init__(self, router: Router, in_flight: Any) -> None:
        self.router = router
        self._in_flight = in_flight

    # -- health and metadata -------------------------------------------------------------------
    def live(self) -> bool:
        """The server answers (a liveness probe reached this code)."""
        return True

    async def unhealthy(self) -> dict[str, str]:
        """The models that cannot serve, and why (empty when the server is ready)."""
        return (await self.router.health_table()).unhealthy()

    async def ready(self) -> bool:
        """Every registered model version has a ready replica."""
        return not await self.unhealthy()

    async def health_table(self) -> ModelTable:
        """A table fresh enough for health answers (the metrics page reads its replicas)."""
        return await self.router.health_table()

    async def pool_reports(self) -> dict[str, list[dict]]:
        """What each pool replica holds (for the metrics page)."""
        return await self.router.pool_reports()

    async def models(self) -> list[str]:
        """The names of every model the server knows."""
        return sorted((await self.router.health_table()).versions)

    async def versions(self, model: str) -> list[str]:
        """``model``'s versions (ready or not); 404 when unknown."""
        return await self.router.versions(model)

    async def model_ready(self, model: str, version: str | None) -> ModelReadiness:
        """Whether ``model`` (its default version when ``version`` is None) can serve; 404 when
        unknown."""
        state, error = await self.router.readiness(model, version)
        return ModelReadiness(model, state.version, error)

    async def metadata(self, model: str, version: str | None) -> ModelMetadata:
        """``model``'s versions and what the version declares; 503 when it is not ready."""
        versions = await self.router.versions(model)
        state, signature = await self.router.signature(model, version)
        return ModelMetadata(
            model,
            versions,
            state.version,
            signature["platform"],
            signature["inputs"],
            signature["outputs"],
            signature.get("handler", ""),
        )

    def server_metadata(self) -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    async def signature(self, model: str, version: str | None) -> tuple[ModelVersionState, dict[str, Any]]:
        """A ready version's declared inputs, outputs and platform."""
        return await self.router.signature(model, version)

    # -- inference -----------------------------------------------------------------------------
    async def resolve(self, model: str, version: str | None) -> ModelVersionState:
        """The version a request for ``model`` goes to; 404 or 503 saying why there is none."""
        return await self.router.resolve(model, version)

    async def target(self, record: RequestRecord, model: str, version: str | None) -> ModelVersionState:
        """The version a request goes to, named in its telemetry record."""
        try:
            state = await self.resolve(model, version)
        finally:
            # Labelled after the lookup, which refreshes the table when it misses: a version
            # registered a moment ago is named, made-up names are not.
            record.model, record.version = self.router.labels(model, version)
        record.version = state.version
        return state

    async def infer(
        self,
        record: RequestRecord,
        model: str,
        version: str | None,
        inputs: list[RequestInput],
        where: str | None = None,
    ) -> list[Answer]:
        """One answer per input, in order. With ``where`` (e.g. ``"instances"``), an input's
        own error names its index (``instances[2]: ...``)."""
        state = await self.target(record, model, version)
        gauge = self._in_flight.labels(record.model)
        gauge.inc()
        try:
            record.answers = list(
                await asyncio.gather(
                    *(self._one(state, i, item, where, record.request_id) for i, item in enumerate(inputs))
                )
            )
        finally:
            gauge.dec()
        return record.answers

    async def _one(
        self, state: ModelVersionState, index: int, item: RequestInput, where: str | None, request_id: str
    ) -> Answer:
        try:
            return await self.router.predict(state, item.data, item.content_type, request_id)
        except RaytorchError as exc:
            raise _for_input(exc, where, index) from None

    async def infer_tensors(
        self, record: RequestRecord, model: str, version: str | None, request: InferRequest
    ) -> InferResult:
        """An Open Inference request, whatever it came over (REST or gRPC)."""
        return await infer_tensors(self.infer, self.signature, record, model, version, request)

    async def explain(
        self,
        record: RequestRecord,
        model: str,
        version: str | None,
        inputs: list[RequestInput],
        request: ExplainRequest,
        where: str | None = None,
    ) -> list[Answer]:
        """One explanation per input, in order (``where`` as for :meth:`infer`)."""
        state = await self.target(record, model, version)
        items = [(item.data, item.content_type) for item in inputs]
        answers: list[Answer] = []
        for index, result in enumerate(await self.router.explain(state, items, request)):  # type: ignore[arg-type]
            if isinstance(result, Rejected):
                raise _for_input(result.error, where, index)
            answers.append(dataclasses.replace(result, version=state.version))
        record.answers = answers
        return answers

    async def stream(
        self, record: RequestRecord, model: str, version: str | None, item: RequestInput
    ) -> tuple[ModelVersionState, AsyncIterator[Any]]:
        """The version and the partial answers of one input, as its replica produces them (a
        failed part is a :class:`Rejected`; closing the iterator stops the handler)."""
        state = await self.target(record, model, version)
        return state, self.router.stream(state, item.data, item.content_type)  # type: ignore[arg-type]


def _for_input(error: RaytorchError, where: str | None, index: int) -> RaytorchError:
    """``error``, its message naming the input (``where[index]``) when the input is to blame."""
    if where is None or error.status not in INPUT_ERRORS:  # the model's trouble, not this input's
        return error
    return type(error)(f"{where}[{index}]: {error.message}", retry_after_s=error.retry_after_s)
