"""What the ingresses route on, read from the state store, and the feed that tells them when it
changes.

Per model name: its default version, its pooled versions and its traffic policy, plus the
versions being removed (hidden). An ingress asks for the models changed since the version it
has, so a change costs one record however many models are registered. No Ray here.
"""

from __future__ import annotations

from deployments.common.model_table import ModelTable
from deployments.common.routing import ModelRouting, RoutingState, RoutingUpdate
from deployments.management.pools import PoolManager
from deployments.management.removal import VersionRemoval
from deployments.management.routing_feed import RoutingFeed
from deployments.management.serve_control import Serve
from deployments.management.state_store import StateStore


class IngressRouting:
    """Routing records from the state store; versions being removed, dedicated (``removal``)
    or pooled (``pools``), are hidden. :meth:`table` is Serve's table as the ingresses see it."""

    def __init__(
        self,
        store: StateStore,
        pools: PoolManager,
        removal: VersionRemoval,
        serve: Serve,
        feed: RoutingFeed,
    ) -> None:
        self.store = store
        self.pools = pools
        self.removal = removal
        self.serve = serve
        self.feed = feed

    def model(self, name: str) -> ModelRouting | None:
        """What the ingresses route on for ``name`` (None: nothing beyond what Serve runs)."""
        pooled = self.pools.routing(name)
        policy = self.store.policy(name)
        default = self.store.default(name)
        if not pooled and policy is None and default is None:
            return None
        return ModelRouting(default, pooled, policy)

    def draining(self) -> frozenset[tuple[str, str]]:
        """Versions being removed: hidden from the ingresses."""
        return frozenset(self.removal.draining | self.pools.draining)

    def state(self) -> RoutingState:
        """Everything the ingresses route on, now."""
        models = {name: routing for name in self.store.models() if (routing := self.model(name)) is not None}
        return RoutingState(self.feed.epoch, self.feed.version, models, self.draining())

    def update(self, since: int, epoch: str) -> RoutingUpdate:
        """What changed after version ``since`` of ``epoch`` (everything for another epoch)."""
        names, serve = self.feed.changes_since(since, epoch)
        if names is None:
            state = self.state()
            return RoutingUpdate(state.epoch, state.version, True, True, dict(state.models), state.draining)
        models = {name: self.model(name) for name in names}
        return RoutingUpdate(self.feed.epoch, self.feed.version, False, serve, models, self.draining())

    async def table(self) -> tuple[dict[str, str], ModelTable]:
        """Serve's applications (name -> status) and its table with this routing applied
        (pooled versions, defaults, policies, versions being removed)."""
        snapshot = await self.serve.snapshot()
        snapshot.table.apply_routing(self.state())
        return snapshot.apps, snapshot.table
