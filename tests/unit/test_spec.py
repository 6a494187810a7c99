"""Model specs and application args: typos and contradictions fail with the field's name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.common.management_args import ManagementArgs
from deployments.common.naming import (
    model_deployment_name,
    parse_model_deployment_name,
    parse_pool_deployment_name,
    parse_pooled_model_id,
    pool_deployment_name,
    pooled_model_id,
)
from deployments.common.settings import IngressArgs, ModelAppArgs, PoolArgs
from deployments.common.workflow_spec import WorkflowArgs
from handlers.spec import ModelSpec
from tests.fixtures.specs import ROOT

ARCH = {"architecture": "resnet18"}


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValidationError, match="top_kk"):
        ModelSpec.model_validate({"name": "m", "source": ARCH, "top_kk": 3})


def test_source_needs_exactly_one_form() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSpec.model_validate({"name": "m", "source": {"architecture": "resnet18", "torchscript": "m.pt"}})
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSpec.model_validate({"name": "m", "source": {}})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"torchscript": "m.pt", "weights": "DEFAULT"}, "weights"),
        ({"architecture": "resnet18", "state_dict": "x.pth"}, "state_dict"),
        ({"factory": "not an import path"}, "package.module:callable"),
    ],
)
def test_source_fields_that_do_not_fit(source: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate({"name": "m", "source": source})


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "x" * 200, "bad name"])
def test_model_names_are_url_safe(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        ModelSpec.model_validate({"name": name, "source": ARCH})


def test_batch_larger_than_concurrency_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_ongoing_requests"):
        ModelAppArgs.model_validate(
            {
                "model": {"name": "m", "source": ARCH},
                "batching": {"max_batch_size": 16},
                "resources": {"max_ongoing_requests": 4},
            }
        )


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(config: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(config.read_text())
    ServeDeploySchema.model_validate(raw)
    for app in raw["applications"]:
        builder = app["import_path"].rsplit(":", 1)[1]
        args_type = {
            "build_model": ModelAppArgs,
            "build_ingress": IngressArgs,
            "build_management": ManagementArgs,
            "build_pool": PoolArgs,
            "build_workflow": WorkflowArgs,
        }[builder]
        args_type.model_validate(app.get("args", {}))
        assert raw["http_options"]["host"] == "127.0.0.1", "serve on loopback unless configured otherwise"


def test_deployment_names_round_trip() -> None:
    name = model_deployment_name("resnet-18.v2", "1.0")
    assert parse_model_deployment_name(name) == ("resnet-18.v2", "1.0")
    assert parse_model_deployment_name("Ingress") is None
    assert parse_pool_deployment_name(pool_deployment_name("small")) == "small"
    assert parse_pool_deployment_name(name) is None
    assert parse_pooled_model_id(pooled_model_id("m@x", "1.0", "ab12")) == ("m@x", "1.0")
    assert parse_pooled_model_id("m@1.0") is None


def test_a_pool_needs_a_replica_and_batches_that_can_fill() -> None:
    with pytest.raises(ValidationError, match="num_replicas >= 1"):
        PoolArgs.model_validate({"name": "p", "resources": {"num_replicas": 0, "max_replicas": 4}})
    with pytest.raises(ValidationError, match="batches could never fill"):
        PoolArgs.model_validate({"name": "p", "resources": {"max_ongoing_requests": 2}})
    with pytest.raises(ValidationError, match="memory_budget_mb"):
        PoolArgs.model_validate({"name": "p", "memory_budget_mb": 0})


def test_ingress_concurrency_is_not_serves_default_of_five() -> None:
    # With Serve's default (5) the ingress capped every model's batches at 5 requests.
    from deployments.app import build_ingress

    deployment = build_ingress(IngressArgs())._bound_deployment
    assert deployment.max_ongoing_requests >= 64
    assert build_ingress(IngressArgs(max_ongoing_requests=7))._bound_deployment.max_ongoing_requests == 7


def test_model_replicas_take_several_batches_of_requests() -> None:
    # Requests held back by Serve's router in the ingress cost CPU on every retry; a replica
    # parks them for free. At concurrency 64 a limit of 2 batches lost a quarter of the throughput.
    from deployments.app import build_model
    from deployments.model.builder import ONGOING_PER_BATCH

    args = ModelAppArgs.model_validate(
        {"model": {"name": "m", "source": {"architecture": "resnet18"}}, "batching": {"max_batch_size": 4}}
    )
    assert build_model(args)._bound_deployment.max_ongoing_requests == 4 * ONGOING_PER_BATCH >= 16
    resources = args.resources.model_copy(update={"max_ongoing_requests": 5})
    pinned = args.model_copy(update={"resources": resources})
    assert build_model(pinned)._bound_deployment.max_ongoing_requests == 5


def test_handler_option_typos_fail_when_the_app_is_built() -> None:
    # `serve run` validates args with ModelAppArgs before any replica starts.
    config = {
        "model": {
            "name": "faces",
            "handler": "object_detector",
            "source": {"architecture": "resnet18"},
            "options": {"scor_threshold": 0.5},
        }
    }
    with pytest.raises(ValidationError, match="scor_threshold"):
        ModelAppArgs.model_validate(config)
