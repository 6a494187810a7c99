"""Build the Serve application of one model version from its typed args.

Used by ``serve run`` (through :func:`deployments.app.build_model`) and by the management part
when a version is registered at runtime, so both deploy exactly the same thing.
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from deployments.common.naming import SERVE_LOGGING, model_deployment_name
from deployments.common.placement import cluster_gpu_count, decide_gpus
from deployments.common.settings import ModelAppArgs, ResourcesConfig
from deployments.model.deployment import ModelDeployment

# Requests a model replica accepts at once, per batch slot. Waiting requests cost a replica
# almost nothing (decoded, parked until the model is idle), while requests that Serve's router
# must hold back in the ingress cost it CPU on every retry: at concurrency 64 with 2 x batch
# size, resnet18 fell from 29 to 22 req/s; with 8 x it held 30 (docs/performance.md).
ONGOING_PER_BATCH = 8


def replica_options(resources: ResourcesConfig, batch_size: int) -> dict:
    """Fixed replicas, or Serve autoscaling between num_replicas and max_replicas.

    Zero workers (TorchServe's min_worker=0) is expressed as autoscaling with a floor of 0,
    since Serve's Python API refuses num_replicas=0.
    """
    if not resources.max_replicas and resources.num_replicas > 0:
        return {"num_replicas": resources.num_replicas}
    return {
        "autoscaling_config": {
            "min_replicas": resources.num_replicas,
            "initial_replicas": resources.num_replicas,
            "max_replicas": resources.max_replicas or 1,
            "target_ongoing_requests": batch_size,
        }
    }


def actor_options(resources: ResourcesConfig, num_gpus: float) -> dict[str, Any]:
    """Ray options of each replica. A model's own Python packages reach its replicas only:
    the folder registration installed them into goes first on their PYTHONPATH (before the
    server's own PYTHONPATH, which replicas keep); packages a Serve config lists without such
    a folder go through Ray's runtime_env pip."""
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": num_gpus}
    if resources.py_deps_dir:
        path = [resources.py_deps_dir, *filter(None, [os.environ.get("PYTHONPATH")])]
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(path)}}
    elif resources.pip_packages:
        options["runtime_env"] = {"pip": {"packages": list(resources.pip_packages), "pip_check": False}}
    return options


def model_application(args: ModelAppArgs) -> Application:
    """One model version as its own application (no HTTP route: the ingress calls it)."""
    spec, resources = args.model, args.resources
    gpus = decide_gpus(resources, cluster_gpu_count(), spec.name)
    deployment = ModelDeployment.options(
        name=model_deployment_name(spec.name, spec.version),
        **replica_options(resources, args.batching.max_batch_size),
        max_ongoing_requests=resources.max_ongoing_requests
        or ONGOING_PER_BATCH * args.batching.max_batch_size,
        max_queued_requests=resources.max_queued_requests,
        ray_actor_options=actor_options(resources, gpus.num_gpus),
        user_config=args.batching.model_dump(),
        logging_config=SERVE_LOGGING,
    )
    return deployment.bind(args, gpus.note)
