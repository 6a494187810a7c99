"""The one path every protocol's prediction takes: resolve the version, fan the inputs out to
its replicas (so they can share a batch), collect one answer per input.

TorchServe's ``/predictions``, KServe v1, Open Inference v2 and the gRPC services all call
:meth:`Predictor.predict`; it fills the request's telemetry record, so every protocol is
counted with its model and version.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from deployments.common.messages import Answer
from deployments.common.model_table import ModelVersionState
from deployments.inference.request_body import RequestInput
from deployments.inference.telemetry import RequestRecord
from handlers.errors import RaytorchError
from handlers.tensor_data import TensorRequest

INPUT_ERRORS = (400, 413, 415)  # statuses that blame one input; their message then names it
MAX_INPUTS = 64


class Router(Protocol):
    """Where predictions go (deployments.inference.router.ServeRouter, fakes in tests)."""

    async def resolve(self, model: str, version: str | None) -> ModelVersionState: ...
    def labels(self, model: str, version: str | None) -> tuple[str, str]: ...
    async def predict(
        self,
        state: ModelVersionState,
        body: bytes | TensorRequest,
        content_type: str | None,
        request_id: str = "",
    ) -> Answer: ...


class Predictor:
    """Runs a request's inputs through one model version."""

    def __init__(self, router: Router, in_flight) -> None:  # type: ignore[no-untyped-def]
        self.router = router
        self._in_flight = in_flight  # prometheus Gauge with a model_name label

    async def predict(
        self,
        record: RequestRecord,
        model: str,
        version: str | None,
        inputs: list[RequestInput],
        where: str | None = None,
    ) -> list[Answer]:
        """One answer per input, in order. With ``where`` (e.g. ``"instances"``), an input's
        own error names its index (``instances[2]: ...``)."""
        try:
            state = await self.router.resolve(model, version)
        finally:
            # Labelled after the lookup, which refreshes the table when it misses: a version
            # registered a moment ago is named, made-up names are not.
            record.model, record.version = self.router.labels(model, version)
        record.version = state.version
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
            if where is None or exc.status not in INPUT_ERRORS:  # the model's trouble, not this input's
                raise
            raise type(exc)(f"{where}[{index}]: {exc.message}", retry_after_s=exc.retry_after_s) from None
