"""Names that tie the parts together: Serve applications and deployments of model versions.

The ingress discovers model versions by their deployment name, whatever application holds
them (a config file's or a runtime registration's), so these functions are the contract
between the model builder, the management part and the router.
"""

from __future__ import annotations

MODEL_DEPLOYMENT_PREFIX = "model:"
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


def registered_app_name(model: str, version: str) -> str:
    """Application name of a version registered at runtime (``<model>@<version>``)."""
    return f"{model}@{version}"


# Serve's own access log (one "CALL predict OK" line per call in every replica) is off: the
# ingress's access log already has one line per request, with its id, model and version, and
# the second line per request cost the model replicas CPU on the hot path.
SERVE_LOGGING = {"enable_access_log": False}
