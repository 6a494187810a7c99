"""Typed application builders named by ``import_path`` in ``configs/*.yaml``.

``serve run`` validates each application's ``args`` against the annotated pydantic type
before deploying, so a wrong or misspelt field is reported with its name.
"""

# No `from __future__ import annotations` here: Serve reads the builders' annotations at
# runtime to validate `args`, and string annotations would skip that validation.
from ray.serve import Application

from deployments.common.auth import token_from_env
from deployments.common.management_args import ManagementArgs
from deployments.common.naming import INGRESS_DEPLOYMENT, MANAGEMENT_DEPLOYMENT, SERVE_LOGGING
from deployments.common.settings import IngressArgs, ModelAppArgs, PoolArgs
from deployments.common.workflow_spec import WorkflowArgs
from deployments.inference.ingress import Ingress
from deployments.management.deployment import ManagementDeployment
from deployments.model.builder import model_application
from deployments.pool.builder import pool_application
from deployments.workflow.builder import workflow_application
from deployments.workflow.serve_calls import ServeWorkflows

# Pinned to the head node: the management part keeps its state directory there, and the
# ingress listens on the address users were given (the head's, unless a config says otherwise).
HEAD_NODE = {"node:__internal_head__": 0.001}


def build_model(args: ModelAppArgs) -> Application:
    """One model version as its own application (no HTTP route: the ingress calls it)."""
    return model_application(args)


def build_pool(args: PoolArgs) -> Application:
    """A model pool (no HTTP route): models registered with ``pool=NAME`` are loaded by its
    replicas on demand and share its resources."""
    return pool_application(args)


def build_workflow(args: WorkflowArgs) -> Application:
    """A workflow: a DAG of served models and Python functions, answering ``/wfpredict/{name}``
    (docs/workflows.md)."""
    return workflow_application(args)


def build_ingress(args: IngressArgs) -> Application:
    """The HTTP entry point serving the inference API (and forwarding /models).

    One replica listens on the head node; several replicas go one per node, each listening on
    its node's address, for a load balancer in front of the cluster.
    """
    placement: dict = {"ray_actor_options": {"num_cpus": args.num_cpus}}
    if args.num_replicas == 1:
        placement["ray_actor_options"]["resources"] = HEAD_NODE
    else:
        placement["max_replicas_per_node"] = 1
    return Ingress.options(
        name=INGRESS_DEPLOYMENT,
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        logging_config=SERVE_LOGGING,
        **placement,
    ).bind(args)


def build_management(args: ManagementArgs) -> Application:
    """The management application (TorchServe's /models API), pinned to the head node
    where its state directory lives. A weak ``RAYTORCH_TOKEN`` fails the build, naming it."""
    token_from_env()
    return ManagementDeployment.options(
        name=MANAGEMENT_DEPLOYMENT,
        ray_actor_options={"num_cpus": 0, "resources": HEAD_NODE},
        logging_config=SERVE_LOGGING,
    ).bind(args, ServeWorkflows())  # workflow applications are built above management
