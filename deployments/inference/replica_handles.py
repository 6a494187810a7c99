"""The ingress's Serve handles to model versions, and what it keeps per version beside them.

A handle is made on a version's first request and kept while the version is routable; each
new routing table drops the handles (and call groups, replica counts and signatures) of
versions that disappeared or stopped being routable, at once: a call through a handle of an
application being deleted would hang. A pooled version gets its own handle on its pool's
deployment with its multiplexed model id, so Serve routes it to a replica that holds the model.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.common.model_table import ModelTable, ModelVersionState
from deployments.inference.call_groups import CallGrouper, Send

VersionKey = tuple[str, str, str]


def version_key(state: ModelVersionState) -> VersionKey:
    """What identifies a version's replicas: its application and deployment, and for a pooled
    version its model id in the pool."""
    return (state.app_name, state.deployment_name, state.model_id)


class ReplicaHandles:
    """Handles, call groups, replica counts and signatures, per routable version."""

    def __init__(self) -> None:
        self._handles: dict[VersionKey, Any] = {}
        self._groupers: dict[VersionKey, CallGrouper] = {}
        self._replicas: dict[VersionKey, int] = {}  # running replicas per routable version
        self.signatures: dict[VersionKey, dict[str, Any]] = {}

    def handle(self, state: ModelVersionState) -> Any:
        """The Serve handle of ``state``'s replicas."""
        key = version_key(state)
        handle = self._handles.get(key)
        if handle is None:
            handle = serve.get_deployment_handle(state.deployment_name, app_name=state.app_name)
            if state.model_id:  # a pooled version: Serve routes by it to a replica holding the model
                handle = handle.options(multiplexed_model_id=state.model_id)
            self._handles[key] = handle
        return handle

    def grouper(self, state: ModelVersionState, send: Send) -> CallGrouper:
        """The call group of ``state``: inputs that arrive together go in one call."""
        key = version_key(state)
        grouper = self._groupers.get(key)
        if grouper is None:
            grouper = self._groupers[key] = CallGrouper(send, lambda: self._replicas.get(key, 1))
        return grouper

    def keep_only_routable(self, table: ModelTable) -> None:
        """Forget every version ``table`` does not route to (the directory calls it on each
        new table)."""
        live = {
            version_key(s): max(1, s.running_replicas)
            for versions in table.versions.values()
            for s in versions.values()
            if table.routable(s)
        }
        self._replicas = live
        for kept in (self._handles, self._groupers, self.signatures):
            for key in [key for key in kept if key not in live]:
                del kept[key]
