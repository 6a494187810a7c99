"""Default versions chosen with set-default, and traffic policies (weighted splits, shadow
traffic), by model name; persisted atomically in ``traffic.json`` on every change.

Kept apart from the registries: a model's versions may be dedicated applications, pooled, or
from the config file, and its default or split may name any of them. Only models someone set a
default or a policy for are here, so the file stays small however many models are registered.
No Ray here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from deployments.common.routing import TrafficPolicy
from deployments.common.state_files import atomic_write

logger = logging.getLogger("ray.serve")


class TrafficStore:
    """Explicit defaults and traffic policies; every change is saved before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.defaults: dict[str, str] = {}
        self.policies: dict[str, TrafficPolicy] = {}
        if path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            defaults = {str(k): str(v) for k, v in (data.get("defaults") or {}).items()}
            policies = {str(k): TrafficPolicy.from_dict(v) for k, v in (data.get("policies") or {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            self.path.rename(aside)
            logger.error(
                "Traffic settings %s are unreadable (%s): moved to %s, starting without",
                self.path,
                exc,
                aside,
            )
            return
        self.defaults, self.policies = defaults, policies

    def _save(self) -> None:
        data = {
            "defaults": self.defaults,
            "policies": {model: policy.to_dict() for model, policy in self.policies.items()},
        }
        atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True))

    def set_default(self, model: str, version: str) -> None:
        """Make ``version`` the default. A split ends (everything goes to the new default); a
        shadow of another version stays."""
        with self._lock:
            self.defaults[model] = version
            policy = self.policies.pop(model, None)
            if policy is not None and policy.shadow not in (None, version):
                self.policies[model] = TrafficPolicy((), policy.shadow, policy.shadow_percent)
            self._save()

    def set_policy(self, model: str, policy: TrafficPolicy | None) -> None:
        """Replace the model's traffic policy (None: requests go to the default again)."""
        with self._lock:
            if policy is None:
                self.policies.pop(model, None)
            else:
                self.policies[model] = policy
            self._save()

    def forget_version(self, model: str, version: str) -> bool:
        """Drop ``version`` from the model's default and policy (it was unregistered); True
        when something changed."""
        with self._lock:
            changed = False
            if self.defaults.get(model) == version:
                del self.defaults[model]
                changed = True
            policy = self.policies.get(model)
            if policy is not None and (version == policy.shadow or version in dict(policy.split)):
                rest = policy.without(version)
                if rest is None:
                    del self.policies[model]
                else:
                    self.policies[model] = rest
                changed = True
            if changed:
                self._save()
            return changed
