"""The private Ray APIs of deployments/common/ray_private.py still exist as it uses them.

Imported and inspected only (no cluster): a Ray upgrade that renames a module, a symbol, an
actor method or a keyword the adapter passes fails here, naming it, instead of in a running
server. The last test keeps the list honest: every private import of the adapter is checked.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from deployments.common import ray_private

ADAPTER = Path(ray_private.__file__)

# (module, symbol): every private name the adapter imports.
PRIVATE_SYMBOLS = [
    ("ray.serve._private.constants", "SERVE_NAMESPACE"),
    ("ray.serve._private.constants", "SERVE_CONTROLLER_NAME"),
    ("ray.serve._private.common", "RequestRoutingInfo"),
    ("ray.serve._private.api", "serve_start"),
    ("ray.serve.context", "_get_global_client"),
    ("ray._raylet", "AuthenticationTokenLoader"),
]


def keywords(function: object) -> set[str]:
    return set(inspect.signature(function).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize(("module", "symbol"), PRIVATE_SYMBOLS)
def test_each_private_symbol_imports(module: str, symbol: str) -> None:
    assert hasattr(importlib.import_module(module), symbol), f"{module}.{symbol} is gone"


def test_serve_names_its_namespace_and_controller_as_the_adapter_expects() -> None:
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    assert isinstance(SERVE_NAMESPACE, str) and SERVE_NAMESPACE
    assert isinstance(SERVE_CONTROLLER_NAME, str) and SERVE_CONTROLLER_NAME


def test_the_controller_and_replica_actors_have_the_methods_called() -> None:
    from ray.serve._private.controller import ServeController
    from ray.serve._private.replica import ReplicaActor

    for method in ("get_http_config", "get_grpc_config", "get_proxy_location"):
        assert hasattr(ServeController, method), f"ServeController.{method} is gone"
    assert hasattr(ReplicaActor, "get_num_ongoing_requests")


def test_the_request_context_takes_a_request_id_and_an_app_name() -> None:
    from ray.serve import context

    assert {"request_id", "app_name"} <= keywords(context._set_request_context)


def test_the_serve_client_reports_details_and_routing_info_and_deploys_without_blocking() -> None:
    from ray.serve._private.client import ServeControllerClient
    from ray.serve._private.common import RequestRoutingInfo

    assert hasattr(ServeControllerClient, "get_serve_details")
    assert "info" in keywords(ServeControllerClient.record_request_routing_info)
    assert {"config", "_blocking"} <= keywords(ServeControllerClient.deploy_apps)
    assert {"replica_id", "multiplexed_model_ids"} <= keywords(RequestRoutingInfo)


def test_serve_start_takes_the_options_of_a_config() -> None:
    from ray.serve._private.api import serve_start

    assert {"http_options", "grpc_options", "controller_options", "proxy_location"} <= keywords(serve_start)


def test_serve_delete_can_return_before_the_application_is_gone() -> None:
    from ray import serve

    assert "_blocking" in keywords(serve.delete)


def test_ray_init_still_reads_the_metrics_port_keyword() -> None:
    from ray._private import worker  # ray.init itself (tests/unit/conftest.py replaces ray.init)

    assert "_metrics_export_port" in inspect.getsource(worker.init)


def test_the_token_loader_answers_as_the_adapter_asks() -> None:
    from ray._raylet import AuthenticationTokenLoader

    for method in ("instance", "has_token", "get_raw_token"):
        assert hasattr(AuthenticationTokenLoader, method), f"AuthenticationTokenLoader.{method} is gone"


def test_the_replica_module_binds_its_grpc_server_where_the_loopback_rewrite_expects() -> None:
    replica = importlib.import_module(ray_private.REPLICA_MODULE)
    bind = getattr(replica, ray_private.REPLICA_BIND_FUNCTION)
    assert list(inspect.signature(bind).parameters) == ["server", "address"]


def test_every_private_import_of_the_adapter_is_checked_here() -> None:
    imported = {
        (node.module, alias.name)
        for node in ast.walk(ast.parse(ADAPTER.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray")
        for alias in node.names
        if "._" in f"{node.module}.{alias.name}"
    }
    assert imported  # the walk found the adapter's imports
    assert imported <= set(PRIVATE_SYMBOLS), sorted(imported - set(PRIVATE_SYMBOLS))
