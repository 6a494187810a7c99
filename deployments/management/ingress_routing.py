"""What the ingresses route on, composed from the management part's stores, and the feed that
tells them when it changes.

Per model name: its default version (the one set with set-default, else the default of the
registry that registered the model first), its pooled versions and its traffic policy. An
ingress asks for the models changed since the version it has, so a change costs one record
however many models are registered. No Ray here.
"""

from __future__ import annotations

from collections.abc import Callable

from deployments.common.routing import ModelRouting, RoutingState, RoutingUpdate
from deployments.management.pools import PoolManager
from deployments.management.registry import RegistryStore
from deployments.management.routing_feed import RoutingFeed
from deployments.management.traffic_store import TrafficStore


class IngressRouting:
    """Routing records from the dedicated registry, the pool registry and the traffic store.

    ``draining()`` returns the dedicated versions being removed (pooled ones come from the pools).
    """

    def __init__(
        self,
        registry: RegistryStore,
        pools: PoolManager,
        traffic: TrafficStore,
        draining: Callable[[], set[tuple[str, str]]],
    ) -> None:
        self.registry = registry
        self.pools = pools
        self.traffic = traffic
        self._draining = draining
        self.feed = RoutingFeed()

    def model(self, name: str) -> ModelRouting | None:
        """What the ingresses route on for ``name`` (None: nothing beyond what Serve runs)."""
        pooled = self.pools.routing(name)
        policy = self.traffic.policies.get(name)
        default = self.default_of(name)
        if not pooled and policy is None and default is None:
            return None
        return ModelRouting(default, pooled, policy)

    def default_of(self, name: str) -> str | None:
        """The set-default choice, else the default of the registry that has the model's
        earliest registration (None: the ingress takes the highest version)."""
        explicit = self.traffic.defaults.get(name)
        if explicit is not None:
            return explicit
        candidates = []
        record = self.registry.state.models.get(name)
        if record is not None:
            candidates.append((record.versions[record.default_version].registered_at, record.default_version))
        pooled = self.pools.registry.defaults.get(name)
        if pooled is not None:
            candidates.append((self.pools.registry.versions(name)[pooled].registered_at, pooled))
        return min(candidates)[1] if candidates else None

    def draining(self) -> frozenset[tuple[str, str]]:
        """Versions being removed: hidden from the ingresses."""
        return frozenset(self._draining() | self.pools.draining)

    def state(self) -> RoutingState:
        """Everything the ingresses route on, now."""
        names = (
            set(self.registry.state.models)
            | set(self.pools.registry.models)
            | set(self.traffic.defaults)
            | set(self.traffic.policies)
        )
        models = {name: routing for name in names if (routing := self.model(name)) is not None}
        return RoutingState(self.feed.epoch, self.feed.version, models, self.draining())

    def update(self, since: int, epoch: str) -> RoutingUpdate:
        """What changed after version ``since`` of ``epoch`` (everything for another epoch)."""
        names, serve = self.feed.changes_since(since, epoch)
        if names is None:
            state = self.state()
            return RoutingUpdate(state.epoch, state.version, True, True, dict(state.models), state.draining)
        models = {name: self.model(name) for name in names}
        return RoutingUpdate(self.feed.epoch, self.feed.version, False, serve, models, self.draining())
