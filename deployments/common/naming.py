"""Names that tie the parts together: Serve applications and deployments of model versions.

The ingress discovers model versions by their deployment name, whatever application holds
them (a config file's or a runtime registration's), so these functions are the contract
between the model builder, the management part and the router.
"""

from __future__ import annotations

MODEL_DEPLOYMENT_PREFIX = "model:"
POOL_DEPLOYMENT_PREFIX = "pool:"
WORKFLOW_DEPLOYMENT_PREFIX = "workflow:"
MANAGEMENT_APP = "management"
MANAGEMENT_DEPLOYMENT = "Management"
INGRESS_DEPLOYMENT = "Ingress"


def model_deployment_name(name: str, version: str) -> str:
    """Serve deployment name of a model version."""
    return f"{MODEL_DEPLOYMENT_PREFIX}{name}@{version}"


def parse_model_deployment_name(deployment: str) -> tuple[str, str] | None:
    """Inverse of :func:`model_deployment_name`; None for deployments that are not models."""
    if not deployment.startswith(MODEL_DEPLOYMENT_PREFIX):
        return None
    name, sep, version = deployment[len(MODEL_DEPLOYMENT_PREFIX) :].rpartition("@")
    return (name, version) if sep and name and version else None


def pool_deployment_name(pool: str) -> str:
    """Serve deployment name of a model pool (the ingress and management find pools by it)."""
    return f"{POOL_DEPLOYMENT_PREFIX}{pool}"


def parse_pool_deployment_name(deployment: str) -> str | None:
    """Inverse of :func:`pool_deployment_name`; None for deployments that are not pools."""
    if not deployment.startswith(POOL_DEPLOYMENT_PREFIX):
        return None
    return deployment[len(POOL_DEPLOYMENT_PREFIX) :] or None


def pooled_model_id(model: str, version: str, token: str) -> str:
    """Serve's multiplexed model id of one pooled registration: ``<model>@<version>#<token>``.

    The token is new for every registration, so a version unregistered and registered again
    with other files is never answered by a copy a pool replica still holds of the old one.
    """
    return f"{model}@{version}#{token}"


def parse_pooled_model_id(model_id: str) -> tuple[str, str] | None:
    """(model, version) of a pooled model id; None when it is not one."""
    head, sep, token = model_id.rpartition("#")
    name, at, version = head.rpartition("@")
    return (name, version) if sep and at and name and version and token else None


def workflow_deployment_name(workflow: str) -> str:
    """Serve deployment name of a workflow (the ingress finds workflows by it)."""
    return f"{WORKFLOW_DEPLOYMENT_PREFIX}{workflow}"


def parse_workflow_deployment_name(deployment: str) -> str | None:
    """Inverse of :func:`workflow_deployment_name`; None for deployments that are not workflows."""
    if not deployment.startswith(WORKFLOW_DEPLOYMENT_PREFIX):
        return None
    return deployment[len(WORKFLOW_DEPLOYMENT_PREFIX) :] or None


def registered_workflow_app_name(workflow: str) -> str:
    """Application name of a workflow registered at runtime (``workflow:<name>``)."""
    return f"{WORKFLOW_DEPLOYMENT_PREFIX}{workflow}"


def workflow_model_name(workflow: str, node: str) -> str:
    """TorchServe's name of a workflow's model node when it registers it: ``<workflow>__<node>``."""
    return f"{workflow}__{node}"


def registered_app_name(model: str, version: str) -> str:
    """Application name of a version registered at runtime (``<model>@<version>``)."""
    return f"{model}@{version}"


# Serve's own access log (one "CALL predict OK" line per call in every replica) is off: the
# ingress's access log already has one line per request, with its id, model and version, and
# the second line per request cost the model replicas CPU on the hot path.
SERVE_LOGGING = {"enable_access_log": False}
