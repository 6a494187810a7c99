"""Build the Serve application of a model pool from its typed args."""

from __future__ import annotations

from ray.serve import Application

from deployments.common.naming import SERVE_LOGGING, pool_deployment_name
from deployments.common.placement import cluster_gpu_count, decide_gpus
from deployments.common.settings import PoolArgs
from deployments.model.builder import ONGOING_PER_BATCH, replica_options
from deployments.pool.deployment import PoolDeployment


def pool_application(args: PoolArgs) -> Application:
    """One pool: fixed replicas, or Serve autoscaling between num_replicas and max_replicas on
    the pool's total load (every model's requests count toward it)."""
    resources = args.resources
    gpus = decide_gpus(resources, cluster_gpu_count(), f"pool {args.name}")
    deployment = PoolDeployment.options(
        name=pool_deployment_name(args.name),
        **replica_options(resources, args.batching.max_batch_size),
        max_ongoing_requests=resources.max_ongoing_requests
        or ONGOING_PER_BATCH * args.batching.max_batch_size,
        max_queued_requests=resources.max_queued_requests,
        ray_actor_options={"num_cpus": resources.num_cpus, "num_gpus": gpus.num_gpus},
        user_config=args.batching.model_dump(),
        logging_config=SERVE_LOGGING,
    )
    return deployment.bind(args, gpus.note)
