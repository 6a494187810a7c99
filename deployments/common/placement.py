"""Decide how many GPUs a model replica asks Ray for.

Ray leaves a replica that asks for a GPU pending forever on a cluster without one, and
requests sent to it hang. With ``gpu_policy: auto`` we ask only when the cluster has GPUs,
and otherwise run on CPU and say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deployments.common.settings import ResourcesConfig

logger = logging.getLogger("raytorch.placement")


@dataclass(frozen=True)
class GpuDecision:
    """GPUs to request per replica, and a note for logs when we fell back to CPU."""

    num_gpus: float
    note: str | None = None


def decide_gpus(resources: ResourcesConfig, cluster_gpus: float, model: str) -> GpuDecision:
    """Pure decision from the config and the cluster's GPU total."""
    wanted = resources.num_gpus
    if wanted <= 0 or resources.gpu_policy == "required" or cluster_gpus >= wanted:
        return GpuDecision(wanted)
    note = (
        f"Model {model} asks for num_gpus={wanted} but the Ray cluster has {cluster_gpus:g} GPUs: "
        "running it on CPU instead (set resources.gpu_policy: required to wait for a GPU node)."
    )
    return GpuDecision(0.0, note)


def cluster_gpu_count() -> float:
    """Total GPUs Ray knows of (0 when Ray is not running, e.g. in unit tests)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))
