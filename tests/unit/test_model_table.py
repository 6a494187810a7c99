"""Routing decisions from Serve's status and the management routing: 404 vs 503, default
versions, pooled versions, traffic splits and shadows, health."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployments.common.model_table import ModelTable
from deployments.common.naming import model_deployment_name, pool_deployment_name
from deployments.common.routing import ModelRouting, PooledEntry, RoutingState, TrafficPolicy
from handlers.errors import ModelNotFoundError, ModelNotReadyError


def app(status: str, deployments: dict, message: str = "") -> SimpleNamespace:
    return SimpleNamespace(status=status, message=message, deployments=deployments)


def deployment(running: int, message: str = "") -> SimpleNamespace:
    return SimpleNamespace(replica_states={"RUNNING": running} if running else {}, message=message)


@pytest.fixture
def table() -> ModelTable:
    return ModelTable.from_status(
        {
            "ingress": app("RUNNING", {"Ingress": deployment(1)}),
            "resnet18": app("RUNNING", {model_deployment_name("resnet18", "1.0"): deployment(2)}),
            "resnet18-v2": app("RUNNING", {model_deployment_name("resnet18", "2.0"): deployment(1)}),
            "broken": app(
                "DEPLOY_FAILED", {model_deployment_name("broken", "1.0"): deployment(0, "weights missing")}
            ),
            "loading": app("DEPLOYING", {model_deployment_name("loading", "1.0"): deployment(0)}),
        }
    )


def test_default_version_is_the_highest_ready(table: ModelTable) -> None:
    assert table.lookup("resnet18", None).version == "2.0"
    assert table.lookup("resnet18", "1.0").app_name == "resnet18"


def test_unknown_model_and_version_are_404(table: ModelTable) -> None:
    with pytest.raises(ModelNotFoundError, match="Model not found: nosuch"):
        table.lookup("nosuch", None)
    # TorchServe's sentence, which scripts grep (its own tests compare it whole).
    with pytest.raises(ModelNotFoundError, match=r"^Model version: 3\.0 does not exist for model: resnet18$"):
        table.lookup("resnet18", "3.0")


def test_failed_model_is_503_with_the_reason(table: ModelTable) -> None:
    with pytest.raises(ModelNotReadyError, match="failed to start: weights missing") as info:
        table.lookup("broken", None)
    assert info.value.retry_after_s


def test_loading_model_is_503(table: ModelTable) -> None:
    with pytest.raises(ModelNotReadyError, match="no ready replica yet"):
        table.lookup("loading", None)


def test_unhealthy_lists_only_models_without_replicas(table: ModelTable) -> None:
    assert set(table.unhealthy()) == {"broken/1.0", "loading/1.0"}


def test_tracebacks_in_serve_messages_are_cut_to_the_error_line() -> None:
    message = (
        "The deployment failed to start 3 times in a row. Error:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\nhandlers.errors.ModelLoadError: weights are not in the cache\n'
    )
    state = ModelTable.from_status(
        {"m": app("DEPLOY_FAILED", {model_deployment_name("m", "1.0"): deployment(0, message)})}
    ).versions["m"]["1.0"]
    assert state.message == "ModelLoadError: weights are not in the cache"


def pooled_table(pool_running: int = 1) -> ModelTable:
    """A config model with two versions, and a pool holding two models (one of them mixed)."""
    table = ModelTable.from_status(
        {
            "cfg": app("RUNNING", {model_deployment_name("cfg", "1.0"): deployment(1)}),
            "cfg2": app("RUNNING", {model_deployment_name("cfg", "2.0"): deployment(1)}),
            "pool-small": app("RUNNING", {pool_deployment_name("small"): deployment(pool_running)}),
        }
    )
    routing = RoutingState(
        models={
            "p": ModelRouting(
                "1.0", {"1.0": PooledEntry("small", "p@1.0#a"), "2.0": PooledEntry("small", "p@2.0#b")}
            ),
            "cfg": ModelRouting(None, {"3.0": PooledEntry("small", "cfg@3.0#c")}),
            "lost": ModelRouting(None, {"1.0": PooledEntry("gone", "lost@1.0#d")}),
        }
    )
    table.apply_routing(routing)
    return table


def test_pooled_versions_route_to_their_pool_with_their_model_id() -> None:
    table = pooled_table()
    state = table.lookup("p", None)
    assert (state.version, state.pool, state.model_id, state.app_name) == (
        "1.0",
        "small",
        "p@1.0#a",
        "pool-small",
    )
    assert table.lookup("cfg", "3.0").model_id == "cfg@3.0#c"  # beside the config's own versions
    assert table.lookup("cfg", None).version == "3.0"  # the highest version, pooled or not


def test_a_pool_that_is_not_running_is_named_in_the_answer_and_in_health() -> None:
    table = pooled_table(pool_running=0)
    with pytest.raises(ModelNotReadyError, match='in pool "small", which has no ready replica'):
        table.lookup("p", None)
    with pytest.raises(ModelNotReadyError, match='in pool "gone", which no application runs'):
        table.lookup("lost", None)
    # One line per pool, not one per model in it; dedicated versions are not counted.
    assert set(table.unhealthy()) == {"pool:small", "pool:gone"}
    assert table.ready_replicas() == {("cfg", "1.0"): 1, ("cfg", "2.0"): 1}


def test_a_split_shares_requests_without_a_version_and_shadows_a_copy() -> None:
    table = pooled_table()
    table.traffic["cfg"] = TrafficPolicy((("1.0", 3), ("2.0", 1)), "3.0", 50)
    chosen = [table.lookup("cfg", None) for _ in range(8)]
    assert [s.version for s in chosen].count("2.0") == 2
    assert sum(1 for s in chosen if s.shadow is not None and s.shadow.version == "3.0") == 4
    assert table.lookup("cfg", "2.0").shadow is None  # a request naming its version is never split or copied


def test_a_split_falls_back_when_its_versions_cannot_serve() -> None:
    table = ModelTable.from_status(
        {
            "a": app("RUNNING", {model_deployment_name("m", "1.0"): deployment(1)}),
            "b": app("DEPLOYING", {model_deployment_name("m", "2.0"): deployment(0)}),
        }
    )
    table.traffic["m"] = TrafficPolicy((("2.0", 1),))
    assert {table.lookup("m", None).version for _ in range(5)} == {"1.0"}


def test_updating_one_model_leaves_the_others() -> None:
    table = pooled_table()
    routing = RoutingState(models={"p": ModelRouting("2.0", {"2.0": PooledEntry("small", "p@2.0#b")})})
    table.update_models(routing, ["p", "lost"])
    assert table.lookup("p", None).version == "2.0" and set(table.versions["p"]) == {"2.0"}
    assert "lost" not in table.versions and "cfg" in table.versions
