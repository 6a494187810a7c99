"""The ingress's view of which model versions exist and whether they can serve.

Built from ``serve.status()`` snapshots: every deployment named by
:func:`deployments.common.naming.model_deployment_name` is a model version, whatever application
holds it (config files and runtime registration alike). Pure data, no Ray calls, so it is
unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version

from deployments.common.naming import parse_model_deployment_name
from handlers.errors import ModelNotFoundError, ModelNotReadyError, ModelVersionNotFoundError

NOT_READY_RETRY_AFTER_S = 5.0
UNKNOWN = "_unknown"  # metric label of names no model has: made-up names must not add series


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

    @classmethod
    def from_status(cls, applications: dict[str, object]) -> ModelTable:
        """Build from ``serve.status().applications`` (objects with .status/.deployments)."""
        table = cls()
        for app_name, app in applications.items():
            for deployment_name, deployment in getattr(app, "deployments", {}).items():
                parsed = parse_model_deployment_name(deployment_name)
                if parsed is None:
                    continue
                model, version = parsed
                replicas = getattr(deployment, "replica_states", {}) or {}
                state = ModelVersionState(
                    model=model,
                    version=version,
                    app_name=app_name,
                    deployment_name=deployment_name,
                    app_status=str(getattr(app.status, "value", app.status)),  # type: ignore[attr-defined]
                    running_replicas=int(replicas.get("RUNNING", 0)),
                    message=summarize_ray_message(
                        getattr(deployment, "message", "") or getattr(app, "message", "") or ""
                    ),
                )
                table.versions.setdefault(model, {})[version] = state
        return table

    def apply_routing(self, routing: dict) -> None:
        """Add the management registry's default versions and versions being removed."""
        self.defaults = dict(routing.get("defaults") or {})
        self.draining = {tuple(pair) for pair in routing.get("draining") or []}  # type: ignore[misc]

    def routable(self, state: ModelVersionState) -> bool:
        """Ready and not being removed."""
        return state.ready and (state.model, state.version) not in self.draining

    def default_name(self, model: str) -> str | None:
        """The model's default version: the registry's choice when it has one, else the
        highest version. The one rule for "the default", used by routing and management."""
        versions = self.versions.get(model, {})
        chosen = self.defaults.get(model)
        if chosen is not None and (chosen in versions or not versions):
            return chosen
        return max(versions, key=_version_key) if versions else None

    def default_version(self, model: str) -> ModelVersionState | None:
        """Where a request without a version goes: the default version if it can serve,
        else the highest routable version (so a failed new default does not take the model down)."""
        candidates = list(self.versions.get(model, {}).values())
        if not candidates:
            return None
        chosen = self.versions[model].get(self.default_name(model) or "")
        if chosen is not None and self.routable(chosen):
            return chosen
        return max(candidates, key=lambda s: (self.routable(s), _version_key(s.version)))

    def labels(self, model: str, version: str | None) -> tuple[str, str]:
        """Metric labels of a request for ``model``/``version``: names this table knows, else
        ``_unknown``, so clients cannot create series by inventing names."""
        versions = self.versions.get(model)
        if not versions:
            return UNKNOWN, UNKNOWN
        chosen = version or self.default_name(model)
        return model, chosen if chosen in versions else UNKNOWN

    def lookup(self, model: str, version: str | None) -> ModelVersionState:
        """The state to route to, or 404 / 503 errors that say why not."""
        state = self.versions.get(model, {}).get(version) if version else self.default_version(model)
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
        """(model, version) -> running replicas, for the replicas-ready gauge."""
        return {(s.model, s.version): s.running_replicas for v in self.versions.values() for s in v.values()}

    def unhealthy(self) -> dict[str, str]:
        """Model versions without a ready replica, keyed 'model/version'."""
        return {
            f"{s.model}/{s.version}": self.not_ready_reason(s)
            for versions in self.versions.values()
            for s in versions.values()
            if not s.ready and (s.model, s.version) not in self.draining
        }
