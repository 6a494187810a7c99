"""Routing decisions from Serve's status: 404 vs 503, default versions, health."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployments.common.model_table import ModelTable
from deployments.common.naming import model_deployment_name
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
