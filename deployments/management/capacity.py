"""Whether the cluster can start a model's replicas now (Serve would leave them pending forever)."""

from __future__ import annotations

from deployments.common.placement import decide_gpus
from deployments.common.settings import ModelAppArgs
from deployments.management.serve_control import Serve
from handlers.errors import InsufficientResourcesError


def missing_resources(
    args: ModelAppArgs,
    available: dict[str, float],
    replicas: int | None = None,
    gpus_per_replica: float | None = None,
) -> str | None:
    """What the cluster lacks right now to start ``replicas`` (default: all) replicas, or None.

    ``gpus_per_replica`` is what will really be asked of Ray (after the CPU fallback).
    """
    r = args.resources
    count = r.num_replicas if replicas is None else replicas
    gpus = r.num_gpus if gpus_per_replica is None else gpus_per_replica
    need = {"CPU": r.num_cpus * count, "GPU": gpus * count}
    short = {k: (v, available.get(k, 0.0)) for k, v in need.items() if v > available.get(k, 0.0) + 1e-9}
    if not short:
        return None
    parts = ", ".join(f"{k} {want:g} needed, {have:g} free" for k, (want, have) in short.items())
    return (
        f"Not enough resources in the Ray cluster for {count} more replica(s) of "
        f"{args.model.name}: {parts}. Lower num_cpus/num_gpus or initial_workers, "
        "free capacity, or add nodes."
    )


class ResourceCheck:
    """Refuses what the cluster cannot start now: Serve would leave the replicas pending forever
    and requests to them would hang. ``wait_for_resources``: the operator chose to wait instead
    (an autoscaling cluster adds nodes)."""

    def __init__(self, serve: Serve, wait_for_resources: bool) -> None:
        self.serve = serve
        self.wait_for_resources = wait_for_resources

    async def check(self, args: ModelAppArgs, replicas: int | None = None) -> None:
        """Check ``replicas`` more replicas (default: all of them); raises
        :class:`InsufficientResourcesError` naming what is missing."""
        if self.wait_for_resources:
            return
        available, total_gpus = await self.serve.resources()
        gpus = decide_gpus(args.resources, total_gpus, args.model.name).num_gpus
        problem = missing_resources(args, available, replicas, gpus)
        if problem:
            raise InsufficientResourcesError(problem)
