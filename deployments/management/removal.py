"""Taking a model version out of service without any request hanging.

Ray Serve hangs a request sent through a handle into an application being deleted. So a
version is first hidden from the ingresses (announced as "draining", which they skip), given
time for every ingress to notice, then deleted; the call returns once Serve has removed the
application, so the same version can be registered again at once (TorchServe's unregister is
synchronous too). No Ray here: Serve is reached through the management part's Serve control.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from deployments.common.model_table import ModelTable
from deployments.management.serve_control import Serve
from handlers.errors import RequestTimeoutError

# How long a version stays hidden when Serve has not removed it within the deadline.
DRAIN_MEMORY_S = 30.0
# Serve deletes an application in a few seconds; a removal waits for it this long at most.
UNREGISTER_TIMEOUT_S = 60.0
GONE_POLL_S = 0.5


class VersionRemoval:
    """Hides, deletes and waits out model versions; ``draining`` is what the ingresses skip."""

    def __init__(self, serve: Serve, announce: Callable[[], None], propagation_s: float) -> None:
        self.serve = serve
        self.announce = announce
        self.propagation_s = propagation_s
        self.draining: set[tuple[str, str]] = set()

    async def remove(
        self, model: str, version: str, app_name: str, drain: bool, forget: Callable[[], None]
    ) -> None:
        """Hide the version, wait ``propagation_s`` when requests may be in flight (``drain``),
        delete its application, call ``forget`` (the registry's part), and return once Serve
        no longer has the application; 504 ``Timed out while cleaning resources`` otherwise."""
        key = (model, version)
        self.draining.add(key)
        self.announce()
        gone = False
        try:
            if drain:
                await asyncio.sleep(self.propagation_s)
            await self.serve.delete(app_name)
            forget()

            def removed(table: ModelTable) -> bool:
                return all(s.app_name != app_name for s in table.versions.get(model, {}).values())

            what = f"Timed out while cleaning resources: {model}"  # TorchServe's sentence
            try:
                await self.serve.wait_until(removed, UNREGISTER_TIMEOUT_S, what, GONE_POLL_S)
            except RequestTimeoutError:
                raise RequestTimeoutError(what) from None
            gone = True
        finally:
            if gone:  # nothing left to hide: the ingresses' next snapshot no longer has it
                self._undrain(key)
            else:  # keep hiding it until Serve has really removed it (the ingress skips it)
                asyncio.get_running_loop().call_later(DRAIN_MEMORY_S, self._undrain, key)

    def _undrain(self, key: tuple[str, str]) -> None:
        self.draining.discard(key)
        self.announce()
