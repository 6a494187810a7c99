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
from deployments.settings import IngressArgs, ManagementArgs, ModelAppArgs, model_deployment_name


def build_model(args: ModelAppArgs) -> Application:
    """One model version as its own application (no HTTP route: the ingress calls it)."""
    spec, resources = args.model, args.resources
    gpus = decide_gpus(resources, cluster_gpu_count(), spec.name)
    if resources.max_replicas:
        replicas: dict = {
            "autoscaling_config": {
                "min_replicas": resources.num_replicas,
                "initial_replicas": max(resources.num_replicas, 1),
                "max_replicas": resources.max_replicas,
                "target_ongoing_requests": args.batching.max_batch_size,
            }
        }
    else:
        replicas = {"num_replicas": resources.num_replicas}
    deployment = ModelDeployment.options(
        name=model_deployment_name(spec.name, spec.version),
        **replicas,
        max_ongoing_requests=resources.max_ongoing_requests or 2 * args.batching.max_batch_size,
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
