"""Typed application builders named by ``import_path`` in ``configs/*.yaml``.

``serve run`` validates each application's ``args`` against the annotated pydantic type
before deploying, so a wrong or misspelt field is reported with its name.
"""

# No `from __future__ import annotations` here: Serve reads the builders' annotations at
# runtime to validate `args`, and string annotations would skip that validation.
from ray.serve import Application

from deployments.ingress import Ingress
from deployments.management import ManagementDeployment
from deployments.model import ModelDeployment
from deployments.placement import cluster_gpu_count, decide_gpus
from deployments.settings import (
    IngressArgs,
    ManagementArgs,
    ModelAppArgs,
    ResourcesConfig,
    model_deployment_name,
)

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


def build_model(args: ModelAppArgs) -> Application:
    """One model version as its own application (no HTTP route: the ingress calls it)."""
    spec, resources = args.model, args.resources
    gpus = decide_gpus(resources, cluster_gpu_count(), spec.name)
    replicas = replica_options(resources, args.batching.max_batch_size)
    deployment = ModelDeployment.options(
        name=model_deployment_name(spec.name, spec.version),
        **replicas,
        max_ongoing_requests=resources.max_ongoing_requests
        or ONGOING_PER_BATCH * args.batching.max_batch_size,
        max_queued_requests=resources.max_queued_requests,
        ray_actor_options={"num_cpus": resources.num_cpus, "num_gpus": gpus.num_gpus},
        user_config=args.batching.model_dump(),
    )
    return deployment.bind(args, gpus.note)


def build_ingress(args: IngressArgs) -> Application:
    """The HTTP ingress application serving the inference API."""
    return Ingress.options(
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.num_cpus},
    ).bind(args)


def build_management(args: ManagementArgs) -> Application:
    """The management application (TorchServe's /models API), pinned to the head node
    where its state directory lives."""
    return ManagementDeployment.options(
        ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
    ).bind(args)
