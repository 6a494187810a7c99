"""Whether the cluster can start a model's replicas now (Serve would leave them pending forever)."""

from __future__ import annotations

from deployments.common.settings import ModelAppArgs


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
