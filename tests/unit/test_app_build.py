"""raytorch.app_build: which configs the server builds itself, and that it builds them as Serve
would (the same applications, the same validation of ``args``)."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml
from ray.serve.deployment import Application

from raytorch.app_build import build, buildable_in_process

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
SERVE_CONFIGS = [path for path in CONFIGS if "applications" in (yaml.safe_load(path.read_text()) or {})]


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_is_built_in_process_and_builds(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert buildable_in_process(config)
    for app in config["applications"]:
        assert isinstance(build(app["import_path"], app.get("args")), Application), app["name"]


def test_a_config_with_what_serve_applies_per_application_goes_through_serve() -> None:
    config = yaml.safe_load(SERVE_CONFIGS[0].read_text())
    assert buildable_in_process(config)
    config["applications"][0]["runtime_env"] = {"env_vars": {"A": "1"}}
    assert not buildable_in_process(config)
    assert not buildable_in_process({"applications": [{"name": "x", "import_path": "my_module:app"}]})
    assert not buildable_in_process({"applications": []})


def test_bad_args_are_refused_naming_the_field_as_serve_would() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_body_bytes"):
        build("deployments.app:build_ingress", {"max_body_bytes": "lots"})
