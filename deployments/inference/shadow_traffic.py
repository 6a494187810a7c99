"""Copies of live requests to a shadow version, whose outcome is only measured.

A traffic policy may name a shadow version (docs/pools.md): the request is answered by its own
version, and a copy goes to the shadow in the background. At most ``MAX_SHADOWS_IN_FLIGHT``
copies run at once per ingress; beyond it a copy is skipped (and counted), so a slow shadow
version can never hold the live traffic's memory or the event loop hostage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from deployments.common.messages import Rejected
from deployments.common.model_table import ModelVersionState
from handlers.errors import RaytorchError
from handlers.tensor_data import TensorRequest

logger = logging.getLogger("ray.serve")

MAX_SHADOWS_IN_FLIGHT = 64

ShadowOutcome = Callable[[str, str, str, float], None]  # (model, version, outcome, seconds)
SendOne = Callable[[ModelVersionState, bytes | TensorRequest, str | None], Awaitable[Any]]


class ShadowTraffic:
    """Sends copies with ``send(state, body, content_type)`` (one input's result) and reports
    each copy's outcome (``"200"``, an error status, or ``"skipped"``) to ``on_outcome``."""

    def __init__(self, send: SendOne, on_outcome: ShadowOutcome | None) -> None:
        self._send = send
        self._on_outcome = on_outcome
        self.in_flight = 0
        self.background: set[asyncio.Task[None]] = set()

    def copy(self, state: ModelVersionState, body: bytes | TensorRequest, content_type: str | None) -> None:
        """Send a copy of the input to ``state`` (the shadow version) in the background."""
        if self.in_flight >= MAX_SHADOWS_IN_FLIGHT:
            self._done(state, "skipped", 0.0)
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(state, body, content_type))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _run(
        self, state: ModelVersionState, body: bytes | TensorRequest, content_type: str | None
    ) -> None:
        started = time.perf_counter()
        try:
            result = await self._send(state, body, content_type)
            outcome = str(result.error.status) if isinstance(result, Rejected) else "200"
        except RaytorchError as exc:
            outcome = str(exc.status)
        except Exception:
            logger.exception('Shadow request to model "%s" version %s failed', state.model, state.version)
            outcome = "500"
        finally:
            self.in_flight -= 1
        self._done(state, outcome, time.perf_counter() - started)

    def _done(self, state: ModelVersionState, outcome: str, seconds: float) -> None:
        if self._on_outcome is not None:
            self._on_outcome(state.model, state.version, outcome, seconds)
