"""What a workflow is: its model nodes, its function nodes and the DAG between them. No Ray.

Two ways to write one, both ending in :class:`WorkflowArgs` (the typed ``args`` of a workflow
application):

- TorchServe's workflow specification (the YAML inside a ``.war``): ``models:`` with global
  settings (``min-workers``, ``max-workers``, ``batch-size``, ``max-batch-delay``,
  ``retry-attempts``, ``timeout-ms``) and one entry per model (``url:`` of its ``.mar`` and
  overrides), and ``dag:`` from each node to its children. :func:`parse_torchserve_spec` reads
  it into :class:`TorchServeSpec`; every name in the DAG that is not a model is a function of
  the archive's handler file.
- Our own config: a Serve application ``deployments.app:build_workflow`` whose ``args`` name
  already served models for the model nodes (docs/workflows.md).

The DAG rules are TorchServe's: exactly one start node (it gets the request), no cycles; the
leaves' outputs are the answer.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from handlers.errors import BadInputError, validation_message
from handlers.spec import NAME_PATTERN, VERSION_PATTERN, StrictModel

# TorchServe's workflow model properties and their defaults (docs/workflows.md of TorchServe).
SETTING_KEYS = {
    "min-workers": "min_workers",
    "max-workers": "max_workers",
    "batch-size": "batch_size",
    "max-batch-delay": "max_batch_delay",
    "retry-attempts": "retry_attempts",
    "timeout-ms": "timeout_ms",
}
MAX_NODES = 64


class NodeSettings(StrictModel):
    """TorchServe's per-model workflow properties (global, or one model's overrides)."""

    min_workers: int = Field(1, ge=0, le=1024, description="Replicas the model starts with.")
    max_workers: int = Field(1, ge=1, le=1024, description="Replicas it may scale to.")
    batch_size: int = Field(1, ge=1, le=512, description="Largest batch.")
    max_batch_delay: int = Field(50, ge=0, le=60_000, description="Milliseconds a batch waits to fill.")
    retry_attempts: int = Field(1, ge=0, le=10, description="Retries of a node that fails with a 5xx.")
    timeout_ms: int = Field(10_000, ge=1, le=3_600_000, description="Deadline of one try of the node.")


class SpecModel(NodeSettings):
    """One ``models:`` entry of a TorchServe spec: its archive and its settings."""

    url: str = Field(..., min_length=1, max_length=2048, description="The .mar, in the model store or a URL.")


class TorchServeSpec(StrictModel):
    """A TorchServe workflow specification, read and checked."""

    defaults: NodeSettings
    models: dict[str, SpecModel]
    dag: dict[str, list[str]]

    def function_nodes(self) -> list[str]:
        """DAG nodes that are not models: functions of the archive's handler file."""
        return [node for node in dag_nodes(self.dag) if node not in self.models]


def _settings(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        if key not in SETTING_KEYS and key != "url":
            known = ", ".join(["url", *SETTING_KEYS])
            raise BadInputError(
                f"Invalid workflow specification: {where}: unknown key {key!r} (known: {known})"
            )
        out[SETTING_KEYS.get(key, key)] = value
    return out


def parse_torchserve_spec(text: str) -> TorchServeSpec:
    """Read TorchServe's YAML spec; 400 naming what is wrong (TorchServe: a ClassCastException)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInputError(f"Invalid workflow specification: not YAML: {exc}") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("models"), dict)
        or not isinstance(raw.get("dag"), dict)
    ):
        raise BadInputError(
            "Invalid workflow specification: it needs a 'models:' mapping and a 'dag:' mapping"
        )
    globals_: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    for key, value in raw["models"].items():
        if key in SETTING_KEYS:
            globals_[SETTING_KEYS[key]] = value
        elif isinstance(value, dict):
            entries[str(key)] = _settings(value, f"models.{key}")
        else:
            raise BadInputError(
                f"Invalid workflow specification: models.{key} must be a model (a mapping with 'url')"
            )
    dag: dict[str, list[str]] = {}
    for node, children in raw["dag"].items():
        if children is None:
            children = []
        if not isinstance(children, list):
            raise BadInputError(f"Invalid workflow specification: dag.{node} must be a list of node names")
        dag[str(node)] = [str(c).strip() for c in children if c is not None and str(c).strip()]
    try:
        defaults = NodeSettings.model_validate(globals_)
        models = {
            name: SpecModel.model_validate({**defaults.model_dump(), **entry})
            for name, entry in entries.items()
        }
    except ValidationError as exc:
        raise BadInputError(f"Invalid workflow specification: {validation_message(exc.errors())}") from None
    check_dag(dag)
    return TorchServeSpec(defaults=defaults, models=models, dag=dag)


def dag_nodes(dag: dict[str, list[str]]) -> list[str]:
    """Every node of ``dag``, parents and children, in the order they first appear."""
    seen: dict[str, None] = {}
    for node, children in dag.items():
        seen[node] = None
        for child in children:
            seen[child] = None
    return list(seen)


def parents_of(dag: dict[str, list[str]]) -> dict[str, list[str]]:
    """Node -> its parents, in the DAG's order (every node present)."""
    parents: dict[str, list[str]] = {node: [] for node in dag_nodes(dag)}
    for node, children in dag.items():
        for child in children:
            if node not in parents[child]:
                parents[child].append(node)
    return parents


def check_dag(dag: dict[str, list[str]]) -> list[str]:
    """The nodes in an order that runs parents first; 400 unless it is TorchServe's kind of
    DAG: one start node, no cycle, names that can be model names."""
    nodes = dag_nodes(dag)
    if not nodes:
        raise BadInputError("Invalid workflow specification: the dag has no nodes")
    if len(nodes) > MAX_NODES:
        raise BadInputError(f"Invalid workflow specification: more than {MAX_NODES} nodes")
    for node in nodes:
        if not re.fullmatch(NAME_PATTERN, node):
            raise BadInputError(f"Invalid workflow specification: invalid node name {node[:80]!r}")
    for node, children in dag.items():
        if node in children:
            raise BadInputError(f"Invalid workflow specification: node {node!r} feeds itself")
    parents = parents_of(dag)
    starts = [node for node in nodes if not parents[node]]
    if len(starts) != 1:
        raise BadInputError(
            "Invalid workflow specification: the dag needs exactly one start node (one without "
            f"parents), it has {len(starts)}: {', '.join(starts) or 'none (a cycle)'}"
        )
    order, waiting = [], {node: len(parents[node]) for node in nodes}
    ready = list(starts)
    while ready:
        node = ready.pop(0)
        order.append(node)
        for child in dag.get(node, []):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) != len(nodes):
        stuck = ", ".join(node for node in nodes if node not in order)
        raise BadInputError(f"Invalid workflow specification: the dag has a cycle through {stuck}")
    return order


class ModelNode(StrictModel):
    """A model node: the served model (and version) it calls, and how it is retried."""

    model: str = Field(..., pattern=NAME_PATTERN, description="A served model's name.")
    version: str | None = Field(
        None, pattern=VERSION_PATTERN, description="Its version (default: the default)."
    )
    retry_attempts: int = Field(1, ge=0, le=10, description="Retries after a 5xx or a timeout.")
    timeout_ms: int = Field(10_000, ge=1, le=3_600_000, description="Deadline of one try.")


class WorkflowArgs(StrictModel):
    """``args`` of a workflow application (``deployments.app:build_workflow``).

    ``models`` maps model nodes to served models; every other DAG node is a function of
    ``handler`` (a ``.py`` file, or a module's import path), called TorchServe's way as
    ``function(data, context)``.
    """

    name: str = Field(..., pattern=NAME_PATTERN, description="The workflow's name in /wfpredict/{name}.")
    models: dict[str, ModelNode | str] = Field(
        default_factory=dict, description="Model node -> a served model's name, or {model, version, ...}."
    )
    dag: dict[str, list[str]] = Field(..., description="Node -> the nodes its output feeds.")
    handler: str | None = Field(None, max_length=1024, description="File or module of the function nodes.")
    retry_attempts: int = Field(1, ge=0, le=10, description="Retries of function nodes after a 5xx.")
    timeout_ms: int = Field(10_000, ge=1, le=3_600_000, description="Deadline of one try of a function node.")
    num_replicas: int = Field(1, ge=1, le=64, description="Replicas of the workflow deployment.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one workflow replica runs at once.")
    url: str | None = Field(None, description="The .war it came from (registered workflows; describe).")
    describe: dict[str, Any] = Field(
        default_factory=dict, description="What TorchServe's describe shows of a .war's global settings."
    )

    @field_validator("models")
    @classmethod
    def _plain_names(cls, value: dict[str, ModelNode | str]) -> dict[str, ModelNode | str]:
        return {node: ModelNode(model=m) if isinstance(m, str) else m for node, m in value.items()}

    @model_validator(mode="after")
    def _valid_dag(self) -> WorkflowArgs:
        try:
            check_dag(self.dag)
        except BadInputError as exc:
            raise ValueError(exc.message) from None
        unused = [node for node in self.models if node not in dag_nodes(self.dag)]
        if unused:
            raise ValueError(f"models not in the dag: {', '.join(unused)}")
        if self.function_nodes() and not self.handler:
            raise ValueError(
                f"nodes {', '.join(self.function_nodes())} are not models, so they are functions: "
                "name the file that defines them in 'handler'"
            )
        return self

    def model_node(self, node: str) -> ModelNode | None:
        """The model a node calls, or None for a function node."""
        found = self.models.get(node)
        return found if isinstance(found, ModelNode) else None

    def function_nodes(self) -> list[str]:
        """DAG nodes that are functions of ``handler``."""
        return [node for node in dag_nodes(self.dag) if node not in self.models]


def validate_args(raw: dict[str, Any]) -> WorkflowArgs:
    """``WorkflowArgs`` from plain data; 400 naming the fields."""
    try:
        return WorkflowArgs.model_validate(raw)
    except ValidationError as exc:
        raise BadInputError(f"Invalid workflow: {validation_message(exc.errors())}") from None


def leaves(dag: dict[str, list[str]]) -> list[str]:
    """Nodes without children: their outputs are the workflow's answer."""
    return [node for node in dag_nodes(dag) if not dag.get(node)]
