"""Taking a model version out of service without any request hanging.

Ray Serve hangs a request sent through a handle into an application being deleted. So a
version is first hidden from the ingresses (announced as "draining", which they skip), given
time for every ingress to notice, then deleted; the call returns once Serve has removed the
application, so the same version can be registered again at once (TorchServe's unregister is
synchronous too). :func:`version_to_remove` decides which versions may go: as in TorchServe, not
the default while the model has others, and not a version a traffic split still sends requests
to. No Ray here: Serve is reached through the management part's Serve control.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path

from deployments.common.model_table import ModelTable
from deployments.management.routing_feed import RoutingFeed
from deployments.management.serve_control import Serve
from deployments.management.state_store import StateStore
from handlers.errors import (
    DefaultVersionError,
    ModelNotFoundError,
    ModelVersionNotFoundError,
    RequestTimeoutError,
)

# How long a version stays hidden when Serve has not removed it within the deadline.
DRAIN_MEMORY_S = 30.0
# Serve deletes an application in a few seconds; a removal waits for it this long at most.
UNREGISTER_TIMEOUT_S = 60.0
GONE_POLL_S = 0.5


def version_to_remove(
    table: ModelTable,
    model: str,
    version: str | None,
    registered: Iterable[str],
    draining: AbstractSet[tuple[str, str]],
) -> str:
    """The version an unregister removes (``None``: the default), or why not.

    ``table``: Serve's versions with the routing applied (pooled versions, defaults, traffic
    policies); ``registered``: the model's dedicated registrations; ``draining``: versions being
    removed already. 404 for an unknown model or version; 403 (TorchServe's rule and sentence)
    for the default while the model has other versions, and likewise for a version a traffic
    split sends requests to: removing it would silently move its share elsewhere. The last
    version may always go (its policy with it); a shadow version, or one the split gives no
    weight, goes and leaves the policy.
    """
    known = {v for v in set(table.versions.get(model, {})) | set(registered) if (model, v) not in draining}
    if not known:
        raise ModelNotFoundError(f"Model not found: {model}")
    default = table.default_version(model)
    version = version or default
    if version not in known:
        raise ModelVersionNotFoundError.of(model, version)
    if len(known) > 1:
        if version == default:
            raise DefaultVersionError(f"Cannot remove default version for model {model}")
        policy = table.traffic.get(model)
        share = policy.percents().get(version, 0.0) if policy is not None else 0.0
        if share > 0:
            raise DefaultVersionError(
                f"Cannot remove version {version} of model {model}: its traffic split sends it "
                f"{share:g}% of the requests. Change the split (PUT /models/{model}/traffic) or "
                f"end it (DELETE /models/{model}/traffic) first"
            )
    return version


class VersionRemoval:
    """Hides, deletes and waits out model versions; ``draining`` is what the ingresses skip.
    ``models_dir``: where registered versions' files are."""

    def __init__(
        self, serve: Serve, store: StateStore, feed: RoutingFeed, models_dir: Path, propagation_s: float
    ) -> None:
        self.serve, self.store, self.feed = serve, store, feed
        self.models_dir = models_dir
        self.propagation_s = propagation_s
        self.draining: set[tuple[str, str]] = set()

    async def remove(self, model: str, version: str, app_name: str, drain: bool) -> None:
        """Hide the version, wait ``propagation_s`` when requests may be in flight (``drain``),
        delete its application, forget it (its registration, files, default and share of the
        traffic: one change of the state store), and return once Serve no longer has the
        application; 504 ``Timed out while cleaning resources`` otherwise."""
        key = (model, version)
        self.draining.add(key)
        self.feed.announce()
        gone = False
        try:
            if drain:
                await asyncio.sleep(self.propagation_s)
            await self.serve.delete(app_name)
            await self.store.remove(model, version)
            shutil.rmtree(self.models_dir / model / version, ignore_errors=True)

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
        self.feed.announce()
