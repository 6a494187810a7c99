"""Every private Ray API raytorch uses, behind one adapter.

Ray 2.60 has no public way to do these few things: start Serve with a config's options without
blocking on its applications, choose the port of Ray's own metrics, tag a call with our request
id, tell Serve's router which models a pool replica holds, read the controller's listen options
and details, ask a replica how many requests it holds, delete an application without waiting,
and read the token `ray get-auth-token` uses. Each is one function here; nothing else in
raytorch names a private Ray module, symbol, attribute or keyword
(``tests/unit/test_import_structure.py`` checks it), and ``tests/unit/test_ray_private.py``
imports each symbol and checks the signature or attribute used, so a Ray upgrade that renames
or changes one fails there, not in production.

Ray is imported inside the functions: the tools (``raytorch/``) import this module without
paying for Ray until they call it.
"""

from __future__ import annotations

from typing import Any

# The module holding each replica's inter-deployment gRPC server address, and the function
# that binds it (rewritten by deployments.common.serve_loopback).
REPLICA_MODULE = "ray.serve._private.replica"
REPLICA_BIND_FUNCTION = "add_port_to_grpc_server"


def serve_actor(name: str) -> Any:
    """A named actor of Serve's namespace (the controller, a replica)."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    return ray.get_actor(name, namespace=SERVE_NAMESPACE)


async def listen_options() -> tuple[Any, Any, str]:
    """The running config's ``http_options``, ``grpc_options`` and ``proxy_location`` (as its
    value, e.g. ``"Disabled"``), from Serve's controller."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME

    controller = serve_actor(SERVE_CONTROLLER_NAME)
    http = await controller.get_http_config.remote()
    grpc_options = await controller.get_grpc_config.remote()
    location = await controller.get_proxy_location.remote()
    return http, grpc_options, str(getattr(location, "value", location))


def ongoing_requests_calls(actor_names: list[str]) -> list[Any]:
    """One call per replica actor for the requests it holds now (the count Serve's router
    balances on); await the refs."""
    return [serve_actor(name).get_num_ongoing_requests.remote() for name in actor_names]


def set_request_context(request_id: str, app_name: str) -> None:
    """Tag the next handle call from this task with ``request_id`` (the replica's log lines
    then carry it)."""
    from ray.serve import context

    context._set_request_context(request_id=request_id, app_name=app_name)


def serve_details() -> dict[str, Any]:
    """The controller's details of every application (the source of ``serve status``)."""
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def record_loaded_models(replica_id: object, model_ids: list[str]) -> None:
    """Tell Serve's router which multiplexed model ids ``replica_id`` holds (what
    ``@serve.multiplexed`` reports)."""
    from ray.serve._private.common import RequestRoutingInfo
    from ray.serve.context import _get_global_client

    _get_global_client().record_request_routing_info(
        RequestRoutingInfo(replica_id=replica_id, multiplexed_model_ids=model_ids)  # type: ignore[arg-type]
    )


def delete_application(app_name: str, wait: bool) -> None:
    """Delete a Serve application; with ``wait`` False, return once the deletion started."""
    from ray import serve

    serve.delete(app_name, _blocking=wait)


def start_ray(dashboard_port: int, metrics_port: int) -> None:
    """Start Ray in this process (namespace ``serve``), its dashboard on 127.0.0.1 and its
    metrics on ``metrics_port`` (a port Ray's public arguments cannot choose)."""
    import ray

    ray.init(
        namespace="serve",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _metrics_export_port=metrics_port,
    )


def start_serve(schema: Any) -> Any:
    """Start Serve with a validated ``ServeDeploySchema``'s HTTP, gRPC, proxy and controller
    options (what ``serve run`` does first); returns Serve's client."""
    from ray.serve._private.api import serve_start
    from ray.serve.config import gRPCOptions

    return serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        controller_options=schema.controller_options,
    )


def deploy_without_waiting(client: Any, schema: Any) -> None:
    """Deploy the schema's applications through ``client`` (from :func:`start_serve`) and
    return before they are built."""
    client.deploy_apps(schema, _blocking=False)


def ray_auth_token() -> str | None:
    """The token a local cluster uses: the one ``ray get-auth-token`` prints, if any (the
    same loader, so RAY_AUTH_TOKEN(_PATH) are honoured)."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return None
    return loader.get_raw_token(ignore_auth_mode=True)
