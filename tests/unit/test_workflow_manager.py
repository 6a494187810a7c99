"""Registering TorchServe workflow archives (built by the real torch-workflow-archiver) with a
fake model manager and a fake Serve: the models each node registers, the rollback of a failed
registration, the code policy, persistence across a restart, list and describe."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.common.workflow_spec import WorkflowArgs
from deployments.management.register_params import RegisterParams
from deployments.management.workflows import WorkflowManager
from handlers.errors import (
    ConfigError,
    ConflictError,
    ModelNotFoundError,
    WorkflowNodeError,
    WorkflowNotFoundError,
)

SPEC = """
models:
    min-workers: 1
    max-workers: 2
    batch-size: 4
    max-batch-delay: 100
    retry-attempts: 2
    timeout-ms: 3000
    nmt_en_de:
      url: en2de.mar
    nmt_en_fr:
      url: en2fr.mar
      batch-size: 2
dag:
  pre_processing: [nmt_en_de, nmt_en_fr]
  nmt_en_de: [aggregate_func]
  nmt_en_fr: [aggregate_func]
"""
HANDLER = (
    "def pre_processing(data, context):\n    return data\n\n"
    "def aggregate_func(data, context):\n    return data\n"
)


class FakeModels:
    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.missing = missing
        self.registered: dict[str, RegisterParams] = {}
        self.scaled: list[tuple] = []

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]:
        if params.url in self.missing:
            await asyncio.sleep(0.01)  # the other node registers meanwhile
            raise ModelNotFoundError(f"Model not found at: {params.url}")
        self.registered[params.model_name or ""] = params
        return 200, {"status": "registered"}

    async def unregister(self, model: str, version: str | None) -> dict[str, str]:
        del self.registered[model]
        return {"status": "unregistered"}

    async def scale(self, model: str, version: str | None, low: int, high: int, synchronous: bool) -> tuple:
        self.scaled.append((model, low, high))
        return 202, {}


class FakeServe:
    def __init__(self, declared: dict[str, tuple[str, WorkflowArgs | None]] | None = None) -> None:
        self.apps: dict[str, WorkflowArgs] = {}
        self.config_apps = declared or {}  # workflows of the Serve config: name -> (app, args)

    async def deploy(self, app_name: str, args: WorkflowArgs) -> None:
        self.apps[app_name] = args

    async def delete(self, app_name: str) -> None:
        self.apps.pop(app_name, None)

    async def statuses(self) -> dict[str, tuple[str, str]]:
        return {name: ("RUNNING", "") for name in [*self.apps, *(a for a, _ in self.config_apps.values())]}

    async def declared(self) -> dict[str, tuple[str, WorkflowArgs | None]]:
        return dict(self.config_apps)


def build_war(store: Path, name: str, spec: str = SPEC, handler: str = HANDLER) -> None:
    work = store.parent / f"work-{name}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(spec)
    (work / "handler.py").write_text(handler)
    archiver = shutil.which("torch-workflow-archiver", path=str(Path(sys.executable).parent))
    command = [archiver or "torch-workflow-archiver", "--workflow-name", name, "--spec-file", "spec.yaml"]
    command += ["--handler", "handler.py", "--export-path", str(store), "-f"]
    subprocess.run(command, cwd=work, check=True, capture_output=True)


def manager(root: Path, models: FakeModels, serve: FakeServe, allow_code: bool = True) -> WorkflowManager:
    return WorkflowManager(models, serve, root / "state", root / "store", None, allow_code, 30.0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "store").mkdir()
    build_war(tmp_path / "store", "dual")
    return tmp_path


def test_register_makes_each_model_node_a_model_and_deploys_the_dag(root: Path) -> None:
    models, serve = FakeModels(), FakeServe()
    answer = asyncio.run(manager(root, models, serve).register("dual.war", None, None))
    assert answer == {"status": "Workflow dual has been registered and scaled successfully."}
    de, fr = models.registered["dual__nmt_en_de"], models.registered["dual__nmt_en_fr"]
    assert (de.url, de.batch_size, de.max_batch_delay, de.initial_workers) == ("en2de.mar", 4, 100, 1)
    assert fr.batch_size == 2  # the model's own override of the global batch-size
    assert sorted(models.scaled) == [("dual__nmt_en_de", 1, 2), ("dual__nmt_en_fr", 1, 2)]  # max-workers
    args = serve.apps["workflow:dual"]
    assert (
        args.model_node("nmt_en_fr").model == "dual__nmt_en_fr"
        and args.model_node("nmt_en_fr").retry_attempts == 2
    )
    assert args.function_nodes() == ["pre_processing", "aggregate_func"]
    assert Path(args.handler).is_file() and Path(args.handler).is_relative_to(
        root / "state" / "workflows" / "dual"
    )


def test_registered_workflows_come_back_after_a_restart(root: Path) -> None:
    asyncio.run(manager(root, FakeModels(), FakeServe()).register("dual.war", "renamed", None))
    restarted = FakeServe()  # a fresh Serve: no applications yet
    again = manager(root, FakeModels(), restarted)
    assert asyncio.run(again.restore()) == ["renamed"]
    assert restarted.apps["workflow:renamed"].dag["pre_processing"] == ["nmt_en_de", "nmt_en_fr"]
    assert asyncio.run(again.list(100, 0)) == {
        "workflows": [{"workflowName": "renamed", "workflowUrl": "dual.war"}]
    }
    (described,) = asyncio.run(again.describe("renamed"))
    assert (
        described["workflowDag"]
        == "{pre_processing=[nmt_en_de, nmt_en_fr], nmt_en_de=[aggregate_func], nmt_en_fr=[aggregate_func]}"
    )
    settings = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
    assert [described[key] for key in settings] == [1, 2, 4, 100]


def test_a_failing_node_rolls_the_whole_registration_back_and_is_named(root: Path) -> None:
    models, serve = FakeModels(missing=("en2fr.mar",)), FakeServe()
    workflows = manager(root, models, serve)
    with pytest.raises(WorkflowNodeError) as caught:
        asyncio.run(workflows.register("dual.war", None, None))
    error = caught.value
    assert (error.status, error.node, error.type_name) == (404, "nmt_en_fr", "ModelNotFoundException")
    assert "node nmt_en_fr (model dual__nmt_en_fr, en2fr.mar): Model not found at: en2fr.mar" in error.message
    assert (
        models.registered == {}
        and serve.apps == {}
        and asyncio.run(workflows.list(100, 0)) == {"workflows": []}
    )
    assert not (root / "state" / "workflows" / "dual").exists()


def test_conflicts_unknown_names_and_the_code_policy(root: Path) -> None:
    workflows = manager(root, FakeModels(), FakeServe())
    asyncio.run(workflows.register("dual.war", None, None))
    with pytest.raises(ConflictError, match=r"Workflow dual is already registered\."):
        asyncio.run(workflows.register("dual.war", None, None))
    with pytest.raises(WorkflowNotFoundError, match="Workflow not found: nope"):
        asyncio.run(workflows.unregister("nope"))
    with pytest.raises(WorkflowNotFoundError, match=r"Workflow not found in workflow store: nope\.war"):
        asyncio.run(workflows.register("nope.war", None, None))
    assert asyncio.run(workflows.unregister("dual")) == {"status": 'Workflow "dual" unregistered'}
    strict = manager(root, FakeModels(), FakeServe(), allow_code=False)
    with pytest.raises(ConfigError, match="allow_archive_code: false"):
        asyncio.run(strict.register("dual.war", None, None))


def test_a_dag_node_that_is_neither_model_nor_function_is_refused(root: Path) -> None:
    build_war(root / "store", "typo", handler=HANDLER.replace("aggregate_func", "aggregate"))
    with pytest.raises(
        Exception, match=r"aggregate_func is neither a model of the spec nor a function of handler\.py"
    ):
        asyncio.run(manager(root, FakeModels(), FakeServe()).register("typo.war", None, None))


def test_list_pages_as_torchserve(root: Path) -> None:
    workflows = manager(root, FakeModels(), FakeServe())
    for name in ("c", "a", "b"):
        asyncio.run(workflows.register("dual.war", name, None))
    assert asyncio.run(workflows.list(2, 0)) == {
        "nextPageToken": "2",
        "workflows": [
            {"workflowName": "a", "workflowUrl": "dual.war"},
            {"workflowName": "b", "workflowUrl": "dual.war"},
        ],
    }
    assert asyncio.run(workflows.list(2, 2))["workflows"] == [
        {"workflowName": "c", "workflowUrl": "dual.war"}
    ]
    assert len(asyncio.run(workflows.list(500, 0))["workflows"]) == 3  # over 100: TorchServe's 100


def test_workflows_of_the_serve_config_are_listed_and_described(root: Path) -> None:
    report = WorkflowArgs.model_validate(
        {
            "name": "language_report",
            "handler": "examples/workflows/language_report.py",
            "models": {"language": {"model": "language"}},
            "dag": {"prepare": ["language", "statistics"], "language": ["report"], "statistics": ["report"]},
        }
    )
    serve = FakeServe({"language_report": ("language_report", report), "stuck": ("stuck_app", None)})
    workflows = manager(root, FakeModels(), serve)
    asyncio.run(workflows.register("dual.war", None, None))
    assert asyncio.run(workflows.list(100, 0))["workflows"] == [
        {"workflowName": "dual", "workflowUrl": "dual.war"},
        {"workflowName": "language_report", "workflowUrl": None, "source": "config"},
        {"workflowName": "stuck", "workflowUrl": None, "source": "config"},
    ]
    (described,) = asyncio.run(workflows.describe("language_report"))
    assert described["source"] == "config" and described["application"] == "language_report"
    assert described["status"] == "RUNNING"
    assert (
        described["workflowDag"] == "{prepare=[language, statistics], language=[report], statistics=[report]}"
    )
    assert {"node": "language", "kind": "model", "model": "language"} in described["nodes"]
    assert {"node": "report", "kind": "function"} in described["nodes"]
    (stuck,) = asyncio.run(workflows.describe("stuck"))  # its replica did not say what it is
    assert stuck["application"] == "stuck_app" and "nodes" not in stuck
    with pytest.raises(ConflictError, match="declared in the Serve config"):
        asyncio.run(workflows.unregister("language_report"))
    with pytest.raises(ConflictError, match="already registered"):  # a .war may not take its name
        asyncio.run(workflows.register("dual.war", "language_report", None))
    with pytest.raises(WorkflowNotFoundError):
        asyncio.run(workflows.describe("nowhere"))
