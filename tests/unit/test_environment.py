"""The RAYTORCH_* environment, read in one place, wins over the config's args where set."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.common.auth import token_from_env
from deployments.common.environment import Environment
from deployments.common.management_args import ManagementArgs
from deployments.management.manager import ModelManager
from raytorch.client import find_token
from tests.fixtures.management import FakeServe


def test_unset_or_empty_variables_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAYTORCH_STATE_DIR", "RAYTORCH_MODEL_STORE", "RAYTORCH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAYTORCH_LOG_DIR", "")
    assert Environment() == Environment(state_dir=None, model_store=None, log_dir=None, token=None)


def test_the_environment_wins_over_the_args_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYTORCH_STATE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("RAYTORCH_MODEL_STORE", str(tmp_path / "store-from-env"))
    monkeypatch.setenv("RAYTORCH_TOKEN", "a-token-from-the-environment")
    manager = ModelManager(
        ManagementArgs(state_dir=str(tmp_path / "args"), model_store="nowhere"), FakeServe()
    )
    assert (manager.state_dir, manager.model_store) == (tmp_path / "from-env", tmp_path / "store-from-env")
    assert token_from_env() == find_token(None, None) == "a-token-from-the-environment"
