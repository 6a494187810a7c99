"""The ingress's view of which model versions exist and whether they can serve.

Built from ``serve.status()`` snapshots: every deployment named by
:func:`deployments.common.naming.model_deployment_name` is a model version, whatever application
holds it (config files and runtime registration alike), and every deployment named by
:func:`~deployments.common.naming.pool_deployment_name` is a model pool. The management part's
routing (:mod:`deployments.common.routing`) adds default versions, the versions that pools
serve (they have no deployment of their own) and traffic policies. Pure data, no Ray calls, so
it is unit-testable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version

from deployments.common.naming import (
    parse_model_deployment_name,
    parse_pool_deployment_name,
    pool_deployment_name,
)
from deployments.common.routing import ModelRouting, PooledEntry, RoutingState, TrafficPolicy
from handlers.errors import ModelNotFoundError, ModelNotReadyError, ModelVersionNotFoundError

NOT_READY_RETRY_AFTER_S = 5.0
UNKNOWN = "_unknown"  # metric label of names no model has: made-up names must not add series
NO_POOL = "NO_POOL"  # status of a pooled version whose pool no application runs


@dataclass(frozen=True)
class ModelVersionState:
    """One model version as Serve reports it."""

    model: str
    version: str
    app_name: str
    deployment_name: str
    app_status: str
    running_replicas: int
    message: str = ""
    pool: str | None = None  # pooled versions: the pool whose replicas load it on demand
    model_id: str = ""  # pooled versions: Serve's multiplexed model id in that pool
    # Set on the copy a lookup returns when this request is also copied to a shadow version.
    shadow: ModelVersionState | None = None

    @property
    def ready(self) -> bool:
        """True when at least one replica can take requests."""
        return self.running_replicas > 0 and self.app_status not in ("DELETING", "DEPLOY_FAILED", NO_POOL)


@dataclass(frozen=True)
class PoolState:
    """One model pool as Serve reports it."""

    name: str
    app_name: str
    deployment_name: str
    app_status: str
    running_replicas: int
    message: str = ""

    @property
    def ready(self) -> bool:
        """True when at least one replica can take requests."""
        return self.running_replicas > 0 and self.app_status not in ("DELETING", "DEPLOY_FAILED")


def summarize_ray_message(message: str) -> str:
    """Serve's status messages may embed a whole traceback; keep the final error line only."""
    if "Traceback" not in message:
        return message.strip()
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    # "handlers.errors.ModelLoadError: text" -> "ModelLoadError: text"
    head, sep, rest = last.partition(": ")
    if sep and "." in head and " " not in head:
        last = f"{head.rsplit('.', 1)[-1]}: {rest}"
    return last


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


@dataclass
class ModelTable:
    """Model name -> versions, with lookup rules for the prediction routes."""

    versions: dict[str, dict[str, ModelVersionState]] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    draining: set[tuple[str, str]] = field(default_factory=set)
    pools: dict[str, PoolState] = field(default_factory=dict)
    traffic: dict[str, TrafficPolicy] = field(default_factory=dict)

    @classmethod
    def from_status(cls, applications: dict[str, object]) -> ModelTable:
        """Build from ``serve.status().applications`` (objects with .status/.deployments)."""
        table = cls()
        for app_name, app in applications.items():
            app_status = str(getattr(app.status, "value", app.status))  # type: ignore[attr-defined]
            for deployment_name, deployment in getattr(app, "deployments", {}).items():
                replicas = getattr(deployment, "replica_states", {}) or {}
                running = int(replicas.get("RUNNING", 0))
                message = summarize_ray_message(
                    getattr(deployment, "message", "") or getattr(app, "message", "") or ""
                )
                parsed = parse_model_deployment_name(deployment_name)
                if parsed is not None:
                    model, version = parsed
                    state = ModelVersionState(
                        model, version, app_name, deployment_name, app_status, running, message
                    )
                    table.versions.setdefault(model, {})[version] = state
                elif (pool := parse_pool_deployment_name(deployment_name)) is not None:
                    table.pools[pool] = PoolState(
                        pool, app_name, deployment_name, app_status, running, message
                    )
        return table

    def apply_routing(self, routing: RoutingState) -> None:
        """Add the management part's routing: default versions, pooled versions, traffic
        policies and the versions being removed."""
        self.defaults = {name: r.default for name, r in routing.models.items() if r.default}
        self.traffic = {name: r.traffic for name, r in routing.models.items() if r.traffic}
        self.draining = set(routing.draining)
        for name, model_routing in routing.models.items():
            if model_routing.pooled:
                self._add_pooled(name, model_routing.pooled)

    def update_models(self, routing: RoutingState, names: Iterable[str]) -> None:
        """Apply the routing of ``names`` only (a change that did not touch Serve's apps)."""
        self.draining = set(routing.draining)
        for name in names:
            versions = self.versions.get(name, {})
            for version in [v for v, s in versions.items() if s.pool is not None]:
                del versions[version]
            model_routing = routing.models.get(name) or ModelRouting()
            self.defaults.pop(name, None)
            self.traffic.pop(name, None)
            if model_routing.default:
                self.defaults[name] = model_routing.default
            if model_routing.traffic:
                self.traffic[name] = model_routing.traffic
            if model_routing.pooled:
                self._add_pooled(name, model_routing.pooled)
            elif name in self.versions and not self.versions[name]:
                del self.versions[name]

    def _add_pooled(self, model: str, pooled: dict[str, PooledEntry]) -> None:
        versions = self.versions.setdefault(model, {})
        for version, entry in pooled.items():
            if version in versions and versions[version].pool is None:
                continue  # a dedicated application of the same version is what Serve runs
            pool = self.pools.get(entry.pool)
            if pool is None:
                state = ModelVersionState(
                    model, version, "", pool_deployment_name(entry.pool), NO_POOL, 0, "",
                    entry.pool, entry.model_id,
                )  # fmt: skip
            else:
                state = ModelVersionState(
                    model, version, pool.app_name, pool.deployment_name, pool.app_status,
                    pool.running_replicas, pool.message, entry.pool, entry.model_id,
                )  # fmt: skip
            versions[version] = state

    def routable(self, state: ModelVersionState) -> bool:
        """Ready and not being removed."""
        return state.ready and (state.model, state.version) not in self.draining

    def default_version(self, model: str) -> str | None:
        """The model's default version (its name): the management part's choice when it has one,
        else the highest version. The one rule for "the default", used by routing and management."""
        versions = self.versions.get(model, {})
        chosen = self.defaults.get(model)
        if chosen is not None and (chosen in versions or not versions):
            return chosen
        return max(versions, key=_version_key) if versions else None

    def default_target(self, model: str) -> ModelVersionState | None:
        """Where a request without a version goes: the default version if it can serve,
        else the highest routable version (so a failed new default does not take the model down)."""
        candidates = list(self.versions.get(model, {}).values())
        if not candidates:
            return None
        chosen = self.versions[model].get(self.default_version(model) or "")
        if chosen is not None and self.routable(chosen):
            return chosen
        return max(candidates, key=lambda s: (self.routable(s), _version_key(s.version)))

    def labels(self, model: str, version: str | None) -> tuple[str, str]:
        """Metric labels of a request for ``model``/``version``: names this table knows, else
        ``_unknown``, so clients cannot create series by inventing names."""
        versions = self.versions.get(model)
        if not versions:
            return UNKNOWN, UNKNOWN
        chosen = version or self.default_version(model)
        return model, chosen if chosen in versions else UNKNOWN

    def lookup(self, model: str, version: str | None) -> ModelVersionState:
        """The state to route to, or 404 / 503 errors that say why not. A request without a
        version follows the model's traffic policy when it has one."""
        if version is None and model in self.traffic:
            return self._by_policy(model, self.traffic[model])
        return self._lookup(model, version)

    def _by_policy(self, model: str, policy: TrafficPolicy) -> ModelVersionState:
        versions = self.versions.get(model, {})
        chosen = (
            policy.choose(lambda v: v in versions and self.routable(versions[v])) if policy.split else None
        )
        state = versions[chosen] if chosen is not None else self._lookup(model, None)
        if policy.take_shadow():
            shadow = versions.get(policy.shadow or "")
            if shadow is not None and shadow.version != state.version and self.routable(shadow):
                state = dataclasses.replace(state, shadow=shadow)
        return state

    def _lookup(self, model: str, version: str | None) -> ModelVersionState:
        state = self.versions.get(model, {}).get(version) if version else self.default_target(model)
        if state is None:
            if model not in self.versions:
                raise ModelNotFoundError(f"Model not found: {model}")
            raise ModelVersionNotFoundError.of(model, version)
        if (state.model, state.version) in self.draining:
            raise ModelNotReadyError(
                f'Model "{model}" version {state.version} is being unregistered',
                retry_after_s=NOT_READY_RETRY_AFTER_S,
            )
        if not state.ready:
            raise ModelNotReadyError(self.not_ready_reason(state), retry_after_s=NOT_READY_RETRY_AFTER_S)
        return state

    @staticmethod
    def not_ready_reason(state: ModelVersionState) -> str:
        """A sentence for users: why this version cannot serve now."""
        detail = f": {state.message}" if state.message else ""
        if state.pool is not None:
            where = f'Model "{state.model}" version {state.version} is in pool "{state.pool}"'
            if state.app_status == NO_POOL:
                return f"{where}, which no application runs: add the pool to the server's config"
            return f"{where}, which has no ready replica (application {state.app_status}){detail}"
        if state.app_status == "DEPLOY_FAILED":
            return f'Model "{state.model}" version {state.version} failed to start{detail}'
        if state.app_status == "RUNNING" and state.running_replicas == 0:
            return (
                f'Model "{state.model}" version {state.version} has no worker to serve inference request. '
                f"Add workers with PUT /models/{state.model}/{state.version}?min_worker=1"
            )
        if state.app_status == "DELETING":
            return f'Model "{state.model}" version {state.version} is being unregistered'
        return (
            f'Model "{state.model}" version {state.version} has no ready replica yet '
            f"(application {state.app_status}){detail}"
        )

    def ready_replicas(self) -> dict[tuple[str, str], int]:
        """(model, version) -> running replicas of dedicated versions, for the replicas-ready
        gauge (pools report theirs once per pool, not once per model they hold)."""
        return {
            (s.model, s.version): s.running_replicas
            for versions in self.versions.values()
            for s in versions.values()
            if s.pool is None
        }

    def unhealthy(self) -> dict[str, str]:
        """Dedicated model versions without a ready replica, keyed 'model/version', and pools
        without one (or missing), keyed 'pool:<name>': one line per pool, not per model in it."""
        result: dict[str, str] = {}
        missing: dict[str, int] = {}
        for versions in self.versions.values():
            for s in versions.values():
                if s.pool is not None:
                    if s.app_status == NO_POOL:
                        missing[s.pool] = missing.get(s.pool, 0) + 1
                elif not s.ready and (s.model, s.version) not in self.draining:
                    result[f"{s.model}/{s.version}"] = self.not_ready_reason(s)
        for pool in self.pools.values():
            if not pool.ready:
                detail = f": {pool.message}" if pool.message else ""
                result[f"pool:{pool.name}"] = (
                    f'Pool "{pool.name}" has no ready replica (application {pool.app_status}){detail}'
                )
        for name, count in missing.items():
            result[f"pool:{name}"] = (
                f'Pool "{name}" is not running: {count} registered model version(s) in it cannot be served'
            )
        return result
