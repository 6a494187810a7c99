"""Route predictions to model deployments through Ray Serve handles.

Every handle call has a deadline, and handles of versions that disappear or stop being
routable are dropped at once (a call through a handle of an app being deleted would hang).
What a handle raises becomes one of our errors here, in one place. A pooled version is called
through its pool's handle with its multiplexed model id, so Serve routes it to a replica that
holds the model. A request the traffic policy also shadows is copied to the shadow version in
the background; the copy's outcome is only measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve import context as serve_context
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from deployments.common.auth import check_bearer
from deployments.common.forwarding import ForwardedRequest, ForwardedResponse, ManagementCall
from deployments.common.messages import Answer, Rejected
from deployments.common.model_table import ModelTable, ModelVersionState, PoolState
from deployments.common.naming import MANAGEMENT_APP, MANAGEMENT_DEPLOYMENT
from deployments.common.pool_calls import PoolCalls
from deployments.common.settings import IngressArgs
from deployments.inference.cached_call import CachedCall
from deployments.inference.call_groups import CallGrouper
from deployments.inference.model_directory import ModelDirectory
from handlers.errors import (
    ModelNotFoundError,
    ModelNotReadyError,
    RaytorchError,
    RequestTimeoutError,
    ResourceNotFoundError,
    UnauthorizedError,
)
from handlers.explain_request import ExplainRequest
from handlers.tensor_data import TensorRequest

logger = logging.getLogger("ray.serve")

OVERLOAD_RETRY_AFTER_S = 1.0
REPLICA_LOST_RETRY_AFTER_S = 2.0
MANAGEMENT_TIMEOUT_S = 5.0
MANAGEMENT_RETRY_AFTER_S = 2.0
TOKEN_RECHECK_S = 10.0
NO_MANAGEMENT = "The management API is not served here: the config has no 'management' application"
# A synchronous register waits for the model to load (and maybe download): allow for it.
MANAGEMENT_CALL_TIMEOUT_S = 900.0
# Shadow copies in flight per ingress; beyond it a copy is skipped (and counted), so a slow
# shadow version can never hold the live traffic's memory or the event loop hostage.
MAX_SHADOWS_IN_FLIGHT = 64
# How stale the pool gauges of /metrics may be (Prometheus scrapes every 15 s or so).
POOL_REPORTS_TTL_S = 2.0

ShadowOutcome = Callable[[str, str, str, float], None]  # (model, version, outcome, seconds)


async def serve_snapshot() -> ModelTable:
    """What Serve runs now (one ``serve.status()``, off the event loop)."""
    status = await asyncio.to_thread(serve.status)
    return ModelTable.from_status(status.applications)


def version_key(state: ModelVersionState) -> tuple[str, str, str]:
    """What identifies a version's replicas: its application and deployment, and for a pooled
    version its model id in the pool."""
    return (state.app_name, state.deployment_name, state.model_id)


class ServeRouter:
    """Resolves model versions and sends inputs to their replicas."""

    def __init__(
        self,
        settings: IngressArgs,
        directory: ModelDirectory | None = None,
        on_shadow: ShadowOutcome | None = None,
    ) -> None:
        self._settings = settings
        # Keyed by version_key(state): a pooled version has its own key within its pool's.
        self._handles: dict[tuple[str, str, str], Any] = {}
        self._groupers: dict[tuple[str, str, str], CallGrouper] = {}
        self._replicas: dict[tuple[str, str, str], int] = {}  # running replicas per routable version
        self._signatures: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._on_shadow = on_shadow
        self._shadows = 0
        self.pools = PoolCalls()
        self._pool_reports = CachedCall(self._read_pool_reports, POOL_REPORTS_TTL_S)
        self._management: Any = None
        self._token: str | None = None
        self._token_at = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self.directory = directory or ModelDirectory(
            serve_snapshot, self._routing_changes, settings.discovery_interval_s, self._drop_stale_handles
        )

    # -- management app ------------------------------------------------------------------------
    def _management_handle(self) -> Any:
        if self._management is None:
            self._management = serve.get_deployment_handle(MANAGEMENT_DEPLOYMENT, app_name=MANAGEMENT_APP)
        return self._management

    async def _routing_changes(self, since: int, timeout_s: float, epoch: str) -> Any:
        try:
            call = self._management_handle().routing_changes.remote(since, timeout_s, epoch)
            return await asyncio.wait_for(call, timeout=timeout_s + MANAGEMENT_TIMEOUT_S)
        except Exception:
            self._management = None  # a new handle once the management app is back
            raise

    async def token(self) -> str:
        """The management token (for inference auth), asked of the management app once."""
        if self._token is None:
            call = self._management_handle().token.remote()
            self._token = await asyncio.wait_for(call, timeout=MANAGEMENT_TIMEOUT_S)
            self._token_at = time.monotonic()
        return self._token

    async def check_management_token(self, header: str | None) -> None:
        """401 unless ``header`` holds the management token: checked in the ingress, before a
        ``/models`` body is read or sent anywhere. A refused token is checked once more against
        a fresh copy (at most every ``TOKEN_RECHECK_S``), for a management app restarted with
        a new key."""
        try:
            token = await self.token()
            try:
                check_bearer(header, token)
            except UnauthorizedError:
                if time.monotonic() - self._token_at < TOKEN_RECHECK_S:
                    raise
                self._token = None
                check_bearer(header, await self.token())
        except (KeyError, RayServeException):  # this server's config has no management app
            raise ResourceNotFoundError(NO_MANAGEMENT) from None
        except (asyncio.TimeoutError, RayActorError) as exc:
            raise ModelNotReadyError(
                f"The management API cannot check the token right now ({type(exc).__name__}); retry.",
                retry_after_s=MANAGEMENT_RETRY_AFTER_S,
            ) from None

    async def forward_to_management(self, request: ForwardedRequest) -> ForwardedResponse:
        """A ``/models`` request, answered by the management deployment's own API."""
        try:
            handle = self._management_handle()
        except (KeyError, RayServeException):  # this server's config has no management app
            raise ResourceNotFoundError(NO_MANAGEMENT) from None
        return await asyncio.wait_for(handle.http.remote(request), MANAGEMENT_CALL_TIMEOUT_S)

    async def manage(self, call: ManagementCall) -> ForwardedResponse:
        """A gRPC management call, answered by the management deployment's REST API code."""
        try:
            handle = self._management_handle()
        except (KeyError, RayServeException):
            raise ResourceNotFoundError(NO_MANAGEMENT) from None
        return await asyncio.wait_for(handle.grpc_management.remote(call), MANAGEMENT_CALL_TIMEOUT_S)

    # -- lookups -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Begin following Serve and the management app."""
        await self.directory.start()

    async def resolve(self, model: str, version: str | None) -> ModelVersionState:
        """The version to route to (the default when None); 404/503 errors say why not."""
        arrived = time.monotonic()
        try:
            return self.directory.table.lookup(model, version)
        except ModelNotFoundError:  # made-up names must not cost a serve.status() each
            await self.directory.refresh_for_unknown(arrived)
        except ModelNotReadyError:
            await self.directory.refresh_since(arrived)
        return self.directory.table.lookup(model, version)

    def labels(self, model: str, version: str | None) -> tuple[str, str]:
        """Metric labels for a request: only names of versions the table knows."""
        return self.directory.table.labels(model, version)

    async def versions(self, model: str) -> list[str]:
        """Versions of ``model`` that Serve knows (ready or not); 404 when there are none."""
        arrived = time.monotonic()
        if model not in self.directory.table.versions:
            await self.directory.refresh_for_unknown(arrived)
        if model not in self.directory.table.versions:
            raise ModelNotFoundError(f"Model not found: {model}")
        return sorted(self.directory.table.versions[model])

    async def health_table(self) -> ModelTable:
        """A table fresh enough for health answers."""
        return await self.directory.fresh_for_health()

    async def pool_reports(self) -> dict[str, list[dict[str, Any]]]:
        """Pool name -> what each of its replicas holds (for the metrics page), at most
        ``POOL_REPORTS_TTL_S`` old: a scrape must not cost a call to every pool replica."""
        return await self._pool_reports.get()

    async def _read_pool_reports(self) -> dict[str, list[dict[str, Any]]]:
        pools: list[PoolState] = list(self.directory.table.pools.values())
        reports = await asyncio.gather(*(self.pools.reports(pool) for pool in pools))
        return {pool.name: report for pool, report in zip(pools, reports, strict=True)}

    # -- predictions ---------------------------------------------------------------------------
    def _handle(self, state: ModelVersionState) -> Any:
        key = version_key(state)
        handle = self._handles.get(key)
        if handle is None:
            handle = serve.get_deployment_handle(state.deployment_name, app_name=state.app_name)
            if state.model_id:  # a pooled version: Serve routes by it to a replica holding the model
                handle = handle.options(multiplexed_model_id=state.model_id)
            self._handles[key] = handle
        return handle

    def _drop_stale_handles(self, table: ModelTable) -> None:
        live = {
            version_key(s): max(1, s.running_replicas)
            for versions in table.versions.values()
            for s in versions.values()
            if table.routable(s)
        }
        self._replicas = live
        for key in list(self._handles):
            if key not in live:
                del self._handles[key]
        for key in list(self._groupers):
            if key not in live:
                del self._groupers[key]
        for key in list(self._signatures):
            if key not in live:
                del self._signatures[key]

    async def signature(self, model: str, version: str | None) -> tuple[ModelVersionState, dict[str, Any]]:
        """A ready version's inputs, outputs and platform (Open Inference metadata), asked of
        one of its replicas once and kept while the version lives."""
        state = await self.resolve(model, version)
        key = version_key(state)
        if key not in self._signatures:
            self._signatures[key] = await self._await(state, self._handle(state).signature.remote())
        return state, self._signatures[key]

    async def readiness(self, model: str, version: str | None) -> tuple[ModelVersionState, str | None]:
        """A version and why it cannot serve (None when it can); 404 when unknown."""
        try:
            return await self.resolve(model, version), None
        except ModelNotReadyError as exc:
            table = self.directory.table
            state = table.versions[model].get(version) if version else table.default_target(model)
            assert state is not None  # lookup raises ModelNotFoundError otherwise
            return state, exc.message

    async def predict(
        self,
        state: ModelVersionState,
        body: bytes | TensorRequest,
        content_type: str | None,
        request_id: str = "",
    ) -> Answer:
        """Send one input to ``state``'s replicas and wait for its answer within the deadline.

        Inputs that arrive together for the same version share one Serve call
        (:mod:`deployments.inference.call_groups`).
        """
        if state.shadow is not None:
            self._shadow(state.shadow, body, content_type)
        if not self._settings.group_calls:
            (result,) = await self._send_group(state, [(body, content_type)], request_id)
            if isinstance(result, Rejected):
                raise result.error
            return dataclasses.replace(result, version=state.version)
        key = version_key(state)
        grouper = self._groupers.get(key)
        if grouper is None:
            grouper = self._groupers[key] = CallGrouper(
                lambda items, request_id: self._send_group(state, items, request_id),
                lambda: self._replicas.get(key, 1),
            )
        result = await grouper.submit(body, content_type, request_id)
        if isinstance(result, Rejected):
            raise result.error
        return dataclasses.replace(result, version=state.version)

    async def explain(
        self, state: ModelVersionState, items: list[tuple[bytes, str | None]], request: ExplainRequest
    ) -> list[Answer | Rejected]:
        """Explanations of ``items`` from one of ``state``'s replicas, within the deadline."""
        return await self._await(state, self._handle(state).explain_many.remote(items, request))

    async def stream(
        self, state: ModelVersionState, body: bytes, content_type: str | None
    ) -> AsyncIterator[Any]:
        """One input's partial answers as its replica produces them (a Serve streaming call),
        each within the deadline of the one before; closing this iterator cancels the call,
        which stops the handler."""
        parts = self._handle(state).options(stream=True).predict_stream.remote(body, content_type)
        try:
            while True:
                try:
                    part = await self._await(state, asyncio.ensure_future(parts.__anext__()))
                except StopAsyncIteration:
                    return
                yield part
        finally:
            parts.cancel()

    async def _send_group(
        self, state: ModelVersionState, items: list[tuple[Any, str | None]], request_id: str
    ) -> list[Answer | Rejected]:
        # The request id goes along in Serve's request context, so the replica's log lines
        # carry the id of our access log and of the client's x-request-id.
        if request_id:
            serve_context._set_request_context(request_id=request_id, app_name=state.app_name)
        return await self._await(state, self._handle(state).predict_many.remote(items))

    async def _await(self, state: ModelVersionState, response: Any) -> Any:
        model, timeout = state.model, self._settings.request_timeout_s
        try:
            return await asyncio.wait_for(response, timeout=timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeoutError(f'Model "{model}" did not answer within {timeout:g}s') from None
        except BackPressureError:
            raise ModelNotReadyError(
                f'Model "{model}" is overloaded: its queue is full. Retry later.',
                retry_after_s=OVERLOAD_RETRY_AFTER_S,
            ) from None
        except RayActorError:
            # The replica died with this request in it (crash, OOM kill); Serve is replacing it.
            logger.warning('A replica of model "%s" died while serving a request', model)
            self._refresh_soon()
            raise ModelNotReadyError(
                f'Model "{model}" lost the replica serving this request; a new one is starting. Retry.',
                retry_after_s=REPLICA_LOST_RETRY_AFTER_S,
            ) from None
        except (DeploymentUnavailableError, RayServeException) as exc:
            self._refresh_soon()
            raise ModelNotReadyError(f'Model "{model}" is unavailable: {exc}', retry_after_s=5) from None
        except Exception as exc:
            # Errors raised in the replica arrive wrapped in a RayTaskError; unwrap ours.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RaytorchError):
                raise cause from None
            raise

    def _shadow(
        self, state: ModelVersionState, body: bytes | TensorRequest, content_type: str | None
    ) -> None:
        if self._shadows >= MAX_SHADOWS_IN_FLIGHT:
            self._shadow_done(state, "skipped", 0.0)
            return
        self._shadows += 1
        task = asyncio.get_running_loop().create_task(self._run_shadow(state, body, content_type))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_shadow(
        self, state: ModelVersionState, body: bytes | TensorRequest, content_type: str | None
    ) -> None:
        started = time.perf_counter()
        try:
            (result,) = await self._send_group(state, [(body, content_type)], "")
            outcome = str(result.error.status) if isinstance(result, Rejected) else "200"
        except RaytorchError as exc:
            outcome = str(exc.status)
        except Exception:
            logger.exception('Shadow request to model "%s" version %s failed', state.model, state.version)
            outcome = "500"
        finally:
            self._shadows -= 1
        self._shadow_done(state, outcome, time.perf_counter() - started)

    def _shadow_done(self, state: ModelVersionState, outcome: str, seconds: float) -> None:
        if self._on_shadow is not None:
            self._on_shadow(state.model, state.version, outcome, seconds)

    def _refresh_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.directory.refresh_since(time.monotonic()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
