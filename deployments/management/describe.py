"""TorchServe's describe object of one model version, from Serve's state and our registry."""

from __future__ import annotations

from typing import Any

from deployments.common.model_table import ModelVersionState
from deployments.common.settings import ModelAppArgs
from deployments.management.registry import VersionRecord


def describe_version(
    model: str,
    version: str,
    state: ModelVersionState | None,
    entry: VersionRecord | None,
    is_default: bool,
) -> dict[str, Any]:
    """One element of ``GET /models/{m}[/{v}|/all]``: TorchServe's fields plus ours
    (``status``, ``message``, ``applicationName``, ``isDefault``)."""
    args = ModelAppArgs.model_validate(entry.args) if entry else None
    replicas = state.running_replicas if state else 0
    return {
        "modelName": model,
        "modelVersion": version,
        "modelUrl": entry.url if entry else f"config:{state.app_name if state else model}",
        "runtime": "python",
        "minWorkers": entry.min_workers if entry else replicas,
        "maxWorkers": entry.max_workers if entry else replicas,
        "batchSize": args.batching.max_batch_size if args else None,
        "maxBatchDelay": round(args.batching.batch_wait_timeout_s * 1000) if args else None,
        "responseTimeout": entry.response_timeout_s if entry else None,
        "loadedAtStartup": entry is None,
        "isDefault": is_default,
        "applicationName": state.app_name if state else (entry.app_name if entry else None),
        "status": state.app_status if state else "NOT_DEPLOYED",
        "message": state.message if state else "",
        "workers": [{"id": i, "status": "READY"} for i in range(replicas)],
    }
