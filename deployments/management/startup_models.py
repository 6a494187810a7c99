"""TorchServe's ``load_models`` (``--models``): models registered when the server starts.

Registered by the management app itself, after it restored what its registry holds, so they
load whether or not ``enable_model_api`` lets clients register (TorchServe does the same). A
model already registered (restored from an earlier run without ``--ncs``) is left as it is;
one that fails is logged with the reason and the others still load, as on TorchServe.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from deployments.common.torchserve_args import StartupModel
from deployments.management.register_params import RegisterParams
from handlers.errors import ConflictError, RaytorchError

logger = logging.getLogger("ray.serve")


class Registers(Protocol):
    """What loading needs of the manager (deployments.management.manager.ModelManager)."""

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]: ...


def startup_params(model: StartupModel, default_workers: int | None) -> RegisterParams:
    """The register request of one startup model (asynchronous: the server is up at once)."""
    workers = model.initial_workers if model.initial_workers is not None else default_workers
    return RegisterParams(
        url=model.url,
        model_name=model.model_name,
        initial_workers=workers,
        batch_size=model.batch_size,
        max_batch_delay=model.max_batch_delay,
        response_timeout=model.response_timeout,
        synchronous=False,
    )


async def load_startup_models(
    manager: Registers,
    models: list[StartupModel],
    default_workers: int | None,
    after: asyncio.Task[Any] | None = None,
) -> list[str]:
    """Register each of ``models`` (after the task ``after``, the restore); the urls that failed."""
    if after is not None:
        await asyncio.wait([after])
    failed = []
    for model in models:
        try:
            _, answer = await manager.register(startup_params(model, default_workers))
            logger.info("Loading initial model %s: %s", model.url, answer.get("status", ""))
        except ConflictError:
            logger.info("Initial model %s is registered already (restored): kept as it is", model.url)
        except RaytorchError as exc:
            logger.error("Failed to load initial model %s: %s", model.url, exc.message)
            failed.append(model.url)
    return failed
