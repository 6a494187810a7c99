"""Send a request's inputs to a model version's replicas through Ray Serve handles.

:class:`ServeRouter` is a :class:`~deployments.inference.version_lookup.VersionLookup` that
also sends: every call has a deadline, and what a handle raises becomes one of our errors
through the one map of :func:`deployments.common.http_errors.call_error`. Its parts each have a
module: the table it looks versions up in (``model_directory.py``, fed by ``serve.status()``
and the management part's routing feed, ``management_link.py``), the handles it keeps
(``replica_handles.py``), the calls it groups (``call_groups.py``) and the copies it sends to
a shadow version (``shadow_traffic.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from deployments.common.http_errors import call_error, replica_lost
from deployments.common.messages import Answer, Rejected
from deployments.common.model_table import ModelVersionState, PoolState
from deployments.common.pool_calls import PoolCalls
from deployments.common.ray_private import set_request_context
from deployments.common.settings import IngressArgs
from deployments.inference.cached_call import CachedCall
from deployments.inference.model_directory import ModelDirectory, RoutingChanges
from deployments.inference.replica_handles import ReplicaHandles, version_key
from deployments.inference.shadow_traffic import ShadowOutcome, ShadowTraffic
from deployments.inference.version_lookup import VersionLookup, serve_snapshot
from handlers.errors import RequestTimeoutError
from handlers.explain_request import ExplainRequest
from handlers.tensor_data import TensorRequest

logger = logging.getLogger("ray.serve")

# How stale the pool gauges of /metrics may be (Prometheus scrapes every 15 s or so).
POOL_REPORTS_TTL_S = 2.0


class ServeRouter(VersionLookup):
    """Resolves model versions (the lookups it inherits) and sends inputs to their replicas.

    Without a ``directory``, it follows Serve itself, and ``routing_changes`` (the management
    part's routing feed, :meth:`ManagementLink.routing_changes`) when there is one.
    """

    def __init__(
        self,
        settings: IngressArgs,
        directory: ModelDirectory | None = None,
        on_shadow: ShadowOutcome | None = None,
        routing_changes: RoutingChanges | None = None,
    ) -> None:
        self._settings = settings
        self.handles = ReplicaHandles()
        self.shadows = ShadowTraffic(self._send_one, on_shadow)
        self.pools = PoolCalls()
        self._pool_reports = CachedCall(self._read_pool_reports, POOL_REPORTS_TTL_S)
        self._background: set[asyncio.Task[None]] = set()
        super().__init__(
            directory
            or ModelDirectory(
                serve_snapshot,
                routing_changes,
                settings.discovery_interval_s,
                self.handles.keep_only_routable,
            )
        )

    async def start(self) -> None:
        """Begin following Serve and the management app."""
        await self.directory.start()

    async def pool_reports(self) -> dict[str, list[dict[str, Any]]]:
        """Pool name -> what each of its replicas holds (for the metrics page), at most
        ``POOL_REPORTS_TTL_S`` old: a scrape must not cost a call to every pool replica."""
        return await self._pool_reports.get()

    async def _read_pool_reports(self) -> dict[str, list[dict[str, Any]]]:
        pools: list[PoolState] = list(self.directory.table.pools.values())
        reports = await asyncio.gather(*(self.pools.reports(pool) for pool in pools))
        return {pool.name: report for pool, report in zip(pools, reports, strict=True)}

    async def signature(self, model: str, version: str | None) -> tuple[ModelVersionState, dict[str, Any]]:
        """A ready version's inputs, outputs and platform (Open Inference metadata), asked of
        one of its replicas once and kept while the version lives."""
        state = await self.resolve(model, version)
        key = version_key(state)
        if key not in self.handles.signatures:
            signature = await self._await(state, self.handles.handle(state).signature.remote())
            self.handles.signatures[key] = signature
        return state, self.handles.signatures[key]

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
            self.shadows.copy(state.shadow, body, content_type)
        if self._settings.group_calls:
            grouper = self.handles.grouper(
                state, lambda items, request_id: self._send_group(state, items, request_id)
            )
            result = await grouper.submit(body, content_type, request_id)  # type: ignore[arg-type]
        else:
            result = await self._send_one(state, body, content_type, request_id)
        if isinstance(result, Rejected):
            raise result.error
        return dataclasses.replace(result, version=state.version)

    async def explain(
        self, state: ModelVersionState, items: list[tuple[bytes, str | None]], request: ExplainRequest
    ) -> list[Answer | Rejected]:
        """Explanations of ``items`` from one of ``state``'s replicas, within the deadline."""
        return await self._await(state, self.handles.handle(state).explain_many.remote(items, request))

    async def stream(
        self, state: ModelVersionState, body: bytes, content_type: str | None
    ) -> AsyncIterator[Any]:
        """One input's partial answers as its replica produces them (a Serve streaming call),
        each within the deadline of the one before; closing this iterator cancels the call,
        which stops the handler."""
        parts = self.handles.handle(state).options(stream=True).predict_stream.remote(body, content_type)
        try:
            while True:
                try:
                    part = await self._await(state, asyncio.ensure_future(parts.__anext__()))
                except StopAsyncIteration:
                    return
                yield part
        finally:
            parts.cancel()

    async def _send_one(
        self,
        state: ModelVersionState,
        body: bytes | TensorRequest,
        content_type: str | None,
        request_id: str = "",
    ) -> Answer | Rejected:
        (result,) = await self._send_group(state, [(body, content_type)], request_id)
        return result

    async def _send_group(
        self, state: ModelVersionState, items: list[tuple[Any, str | None]], request_id: str
    ) -> list[Answer | Rejected]:
        # The request id goes along in Serve's request context, so the replica's log lines
        # carry the id of our access log and of the client's x-request-id.
        if request_id:
            set_request_context(request_id, state.app_name)
        return await self._await(state, self.handles.handle(state).predict_many.remote(items))

    async def _await(self, state: ModelVersionState, response: Any) -> Any:
        model, timeout = state.model, self._settings.request_timeout_s
        try:
            return await asyncio.wait_for(response, timeout=timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeoutError(f'Model "{model}" did not answer within {timeout:g}s') from None
        except Exception as exc:
            error = call_error(exc, f'Model "{model}"')
            if error is None:
                raise
            if replica_lost(exc):  # Serve is replacing it: our table is stale
                logger.warning('Model "%s" lost a replica serving a request: %s', model, type(exc).__name__)
                self._refresh_soon()
            raise error from None

    def _refresh_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.directory.refresh_since(time.monotonic()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
