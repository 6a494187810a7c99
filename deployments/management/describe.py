"""TorchServe's describe object of one model version, from Serve's state and our state store.

No Ray here: :class:`DeploymentFacts` (what Serve says of the version's replicas and settings)
is gathered by the management part's Serve control and passed in.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.common.model_table import ModelVersionState
from deployments.common.settings import ModelAppArgs
from deployments.management.register_params import default_note
from deployments.management.state_records import VersionRecord

DEFAULT_RESPONSE_TIMEOUT_S = 120  # TorchServe's default_response_timeout, shown when none was set


@dataclass(frozen=True)
class ReplicaFacts:
    """One replica of a model version, as Serve reports it."""

    replica_id: str
    state: str
    pid: int | None = None
    started_at_s: float | None = None
    node_ip: str | None = None


@dataclass(frozen=True)
class DeploymentFacts:
    """A model version's replicas and serving settings, as Serve runs them now.

    ``pending`` is the number of requests its running replicas hold (None when unknown).
    """

    replicas: list[ReplicaFacts] = field(default_factory=list)
    max_ongoing_requests: int | None = None
    batching: dict[str, Any] = field(default_factory=dict)
    num_gpus: float = 0.0
    pending: int | None = None


def rss_bytes(pid: int | None) -> int:
    """Resident memory of a local process (0 when it runs on another node or is gone)."""
    if not pid:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _worker(replica: ReplicaFacts, gpu: bool) -> dict[str, Any]:
    started = (
        datetime.datetime.fromtimestamp(replica.started_at_s, datetime.timezone.utc).isoformat()
        if replica.started_at_s
        else None
    )
    return {
        "id": replica.replica_id,
        "startTime": started,
        # TorchServe's READY for a replica that serves; Serve's own state otherwise.
        "status": "READY" if replica.state == "RUNNING" else replica.state,
        "memoryUsage": rss_bytes(replica.pid),
        "pid": replica.pid,
        "gpu": gpu,
        "gpuUsage": "N/A",
        "node": replica.node_ip,
    }


def describe_version(
    model: str,
    version: str,
    state: ModelVersionState | None,
    entry: VersionRecord | None,
    is_default: bool,
    facts: DeploymentFacts | None = None,
    startup_timeout_s: float | None = None,
) -> dict[str, Any]:
    """One element of ``GET /models/{m}[/{v}|/all]``: TorchServe's fields, plus ours
    (``status``, ``message``, ``applicationName``, ``isDefault``, ``raytorchDefaults``)."""
    args = ModelAppArgs.model_validate(entry.args) if entry else None
    facts = facts or DeploymentFacts()
    batching = args.batching.model_dump() if args else facts.batching
    replicas = state.running_replicas if state else 0
    max_ongoing = facts.max_ongoing_requests or 0
    pending = facts.pending or 0
    gpus = args.resources.num_gpus if args else facts.num_gpus
    workers = [_worker(r, gpus > 0) for r in facts.replicas] or [
        {"id": str(i), "status": "READY", "gpu": gpus > 0} for i in range(replicas)
    ]
    description = {
        "modelName": model,
        "modelVersion": version,
        "modelUrl": entry.url if entry else f"config:{state.app_name if state else model}",
        "runtime": entry.runtime if entry else "python",
        "minWorkers": entry.min_workers if entry else replicas,
        "maxWorkers": entry.max_workers if entry else replicas,
        "batchSize": batching.get("max_batch_size"),
        "maxBatchDelay": round(batching.get("batch_wait_timeout_s", 0) * 1000) if batching else None,
        "responseTimeout": (entry.response_timeout_s if entry else None) or DEFAULT_RESPONSE_TIMEOUT_S,
        "startupTimeout": entry.startup_timeout_s
        if entry and entry.startup_timeout_s is not None
        else (startup_timeout_s),
        "loadedAtStartup": entry is None,
        "deviceType": "gpu" if gpus > 0 else "cpu",
        "workers": workers,
        "jobQueueStatus": {
            # Requests the running replicas would still take before new ones wait in the router.
            "remainingCapacity": max(0, max_ongoing * replicas - pending),
            "pendingRequests": pending,
        },
        "isDefault": is_default,
        "applicationName": state.app_name if state else (entry.app_name if entry else None),
        "status": state.app_status if state else "NOT_DEPLOYED",
        "message": state.message if state else "",
    }
    if entry and args and entry.defaults:
        # Where raytorch's defaults (not the request, not the archive) decided, and TorchServe's differ.
        description["raytorchDefaults"] = {name: default_note(name, args) for name in entry.defaults}
    return description
