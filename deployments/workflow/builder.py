"""Build the Serve application of one workflow from its typed args (``serve run`` through
:func:`deployments.app.build_workflow`, and the management part for a registered ``.war``)."""

from __future__ import annotations

from ray.serve import Application

from deployments.common.naming import SERVE_LOGGING, workflow_deployment_name
from deployments.common.workflow_spec import WorkflowArgs
from deployments.workflow.deployment import WorkflowDeployment


def workflow_application(args: WorkflowArgs) -> Application:
    """One workflow as its own application (no HTTP route: the ingress calls it). Its replicas
    reserve no CPU: they wait on models, and function nodes are short."""
    return WorkflowDeployment.options(
        name=workflow_deployment_name(args.name),
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
        logging_config=SERVE_LOGGING,
    ).bind(args)
