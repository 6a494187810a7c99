"""The management API as ``raytorch torchserve`` runs it: TorchServe's key file, enable_model_api
and registration defaults (:func:`torchserve_management_app`), and its ``load_models``
(``--models``): models registered when the server starts (:func:`load_startup_models`).

Registered by the management app itself, after it restored what its registry holds, so they
load whether or not ``enable_model_api`` lets clients register (TorchServe does the same). A
model already registered (restored from an earlier run without ``--ncs``) is left as it is;
one that fails is logged with the reason and the others still load, as on TorchServe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI

from deployments.common.torchserve_args import StartupModel, TorchServeManagement
from deployments.common.ts_keys import KeyFile
from deployments.management.api import Manager, create_management_app
from deployments.management.register_params import TORCHSERVE_DEFAULTS, RegisterParams
from handlers.errors import ConflictError, RaytorchError

logger = logging.getLogger("ray.serve")

# TorchServe's batching of a registration that names none, where ours batches 8 at once: a
# handler written for TorchServe gets one request per call unless asked for more (many index
# data[0]); side by side, describe showed batchSize 8 here and 1 on TorchServe.
TORCHSERVE_BATCHING = {
    "batch_size": TORCHSERVE_DEFAULTS["batchSize"],
    "max_batch_delay": TORCHSERVE_DEFAULTS["maxBatchDelay"],
}


class Registers(Protocol):
    """What loading needs of the manager (deployments.management.manager.ModelManager)."""

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]: ...


def management_authorizer(ts: TorchServeManagement) -> Callable[[str | None], None]:
    """A check of TorchServe's management key (raises UnauthorizedError), for /models and
    /workflows alike; it accepts every caller when token authorization is off."""
    keys = KeyFile(ts.key_file, ts.token_expiration_min) if ts.key_file else None

    def authorize(header: str | None) -> None:
        if keys is not None:
            keys.check(header, "management")

    return authorize


def torchserve_management_app(manager: Manager, ts: TorchServeManagement) -> FastAPI:
    """The /models app with TorchServe's management key (None: no key asked), its
    enable_model_api, default_workers_per_model / default_response_timeout and batching."""
    authorize = management_authorizer(ts)
    defaults = {"initial_workers": ts.default_workers, "response_timeout": ts.default_response_timeout}
    defaults |= TORCHSERVE_BATCHING
    return create_management_app(
        manager,
        authorize,
        enable_model_api=ts.model_api,
        register_defaults={k: v for k, v in defaults.items() if v is not None},
    )


def startup_params(model: StartupModel, default_workers: int | None) -> RegisterParams:
    """The register request of one startup model (asynchronous: the server is up at once)."""
    workers = model.initial_workers if model.initial_workers is not None else default_workers
    return RegisterParams(
        url=model.url,
        model_name=model.model_name,
        initial_workers=workers,
        batch_size=model.batch_size or TORCHSERVE_BATCHING["batch_size"],
        max_batch_delay=TORCHSERVE_BATCHING["max_batch_delay"]
        if model.max_batch_delay is None
        else model.max_batch_delay,
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
