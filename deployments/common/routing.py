"""What the ingress routes on besides Serve's own state: default versions, pooled versions and
traffic policies (weighted splits and shadow traffic between a model's versions).

The management part owns these (its registries) and sends :class:`RoutingUpdate` objects; each
ingress keeps a :class:`RoutingState`. An update carries either everything (``full``: the
first one, or after the management part restarted) or only the models changed since the version
the ingress already has, so registering the 1,000th pooled model sends one record, not 1,000.
Pure data, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PooledEntry:
    """A version served by a model pool: which pool, and its multiplexed model id there."""

    pool: str
    model_id: str


@dataclass(frozen=True)
class TrafficPolicy:
    """How requests that name no version are shared between a model's versions.

    ``split``: (version, weight) pairs. Each version gets requests in proportion to its weight,
    chosen by smooth weighted round robin among the versions that can serve right now: the shares
    are exact over any run of requests (a 90/10 canary sends exactly 1 request in 10 to the
    canary), not just on average, and a version that cannot serve leaves its share to the others.
    ``shadow``: a version that also receives a copy of ``shadow_percent`` % of those requests;
    its answers are only measured, never returned.
    """

    split: tuple[tuple[str, float], ...] = ()
    shadow: str | None = None
    shadow_percent: float = 0.0
    # Round-robin credits of this ingress; they live as long as the policy does.
    _credits: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    _shadow_credit: list[float] = field(default_factory=lambda: [0.0], compare=False, repr=False)

    def percents(self) -> dict[str, float]:
        """Version -> percent of the unversioned traffic (the split's weights, normalised)."""
        total = sum(weight for _, weight in self.split)
        return {version: round(100.0 * weight / total, 3) for version, weight in self.split} if total else {}

    def choose(self, can_serve: Callable[[str], bool]) -> str | None:
        """The version for the next request, among those ``can_serve`` accepts (None: none can)."""
        eligible = [(v, w) for v, w in self.split if w > 0 and can_serve(v)]
        if not eligible:
            return None
        credits = self._credits
        best, best_credit, total = eligible[0][0], float("-inf"), 0.0
        for version, weight in eligible:
            total += weight
            credit = credits.get(version, 0.0) + weight
            credits[version] = credit
            if credit > best_credit:
                best, best_credit = version, credit
        credits[best] -= total
        return best

    def take_shadow(self) -> bool:
        """Whether this request also goes to the shadow version (``shadow_percent`` of requests,
        evenly spread)."""
        if self.shadow is None or self.shadow_percent <= 0:
            return False
        self._shadow_credit[0] += self.shadow_percent
        if self._shadow_credit[0] >= 100.0:
            self._shadow_credit[0] -= 100.0
            return True
        return False

    def without(self, version: str) -> TrafficPolicy | None:
        """This policy once ``version`` is gone (None when nothing is left to control)."""
        split = tuple((v, w) for v, w in self.split if v != version)
        shadow = None if self.shadow == version else self.shadow
        if len(split) < 2 and shadow is None:
            return None
        return TrafficPolicy(split if len(split) >= 2 else (), shadow, self.shadow_percent if shadow else 0.0)

    def to_dict(self) -> dict:
        """JSON form, as stored and as the management API shows it."""
        return {
            "split": self.percents(),
            "shadow": {"version": self.shadow, "percent": self.shadow_percent} if self.shadow else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrafficPolicy:
        """Inverse of :meth:`to_dict`."""
        shadow = data.get("shadow") or {}
        return cls(
            tuple((str(v), float(w)) for v, w in (data.get("split") or {}).items()),
            shadow.get("version"),
            float(shadow.get("percent") or 0.0),
        )


@dataclass(frozen=True)
class ModelRouting:
    """What the management part decides for one model name."""

    default: str | None = None
    pooled: dict[str, PooledEntry] = field(default_factory=dict)
    traffic: TrafficPolicy | None = None


@dataclass(frozen=True)
class RoutingUpdate:
    """One answer of the management part's routing long poll.

    ``models`` maps a name to its routing, or to None when the name has nothing to route any
    more. ``serve`` says the change also touched Serve applications (a dedicated version was
    deployed, became ready or is being deleted), so the ingress must look at Serve again.
    """

    epoch: str
    version: int
    full: bool
    serve: bool
    models: dict[str, ModelRouting | None]
    draining: frozenset[tuple[str, str]] = frozenset()


@dataclass
class RoutingState:
    """An ingress's copy of the management part's routing."""

    epoch: str = ""
    version: int = -1
    models: dict[str, ModelRouting] = field(default_factory=dict)
    draining: frozenset[tuple[str, str]] = frozenset()

    def apply(self, update: RoutingUpdate) -> set[str] | None:
        """Take ``update`` in; returns the names it changed, or None when it was older than what
        this state already has (answers of overlapping polls may arrive out of order)."""
        if update.epoch == self.epoch and update.version <= self.version:
            return None
        if update.full:
            changed = set(self.models) | set(update.models)
            self.models = {name: r for name, r in update.models.items() if r is not None}
        elif update.epoch != self.epoch:
            return None  # a delta of another management instance: wait for its full update
        else:
            changed = set(update.models)
            for name, routing in update.models.items():
                if routing is None:
                    self.models.pop(name, None)
                else:
                    self.models[name] = routing
        self.epoch, self.version, self.draining = update.epoch, update.version, update.draining
        return changed
