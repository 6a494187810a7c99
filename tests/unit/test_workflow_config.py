"""The workflow declared in configs/workflow.yaml (no .war), run without Ray: its args as Serve
validates them, its function nodes from examples/workflows/, and its model node answered by the
real language model of the same config, in-process."""

from __future__ import annotations

import asyncio
import json

import yaml

from deployments.common.workflow_answer import WorkflowRequest, compose, start_input
from deployments.common.workflow_dag import DagRunner, Node, NodeInput, Payload
from deployments.common.workflow_spec import WorkflowArgs, dag_nodes
from deployments.workflow.functions import encode_output, function_call, initialize, load_functions
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.fixtures.specs import ROOT


def test_the_config_workflow_answers_with_the_language_and_the_counts() -> None:
    config = yaml.safe_load((ROOT / "configs" / "workflow.yaml").read_text())
    apps = {app["import_path"].rsplit(":", 1)[1]: app["args"] for app in config["applications"]}
    args = WorkflowArgs.model_validate(apps["build_workflow"])
    language = create_handler(ModelSpec.model_validate(apps["build_model"]["model"]))
    language.load()

    async def model(given: NodeInput) -> Payload:  # what the model deployment does with one input
        (payload,) = given.values()
        return encode_output(language.predict(payload.data, payload.content_type))

    functions = load_functions(args.handler or "", args.function_nodes())
    for name, function in functions.items():
        initialize(name, function, None)  # as the workflow's replica does when it starts
    nodes = {
        name: Node(name, model, "language")
        if args.model_node(name)
        else Node(name, function_call(functions[name], None))
        for name in dag_nodes(args.dag)
    }
    result = asyncio.run(
        DagRunner(args.dag, nodes).run(start_input(WorkflowRequest(b"Dies ist  ein deutscher Satz.")))
    )
    assert result.error is None
    answer = json.loads(compose(result.outputs).data)
    assert answer["language"] == "de" and 0.5 < answer["score"] <= 1
    assert (answer["characters"], answer["words"]) == (28, 5)
    assert {r.node for r in result.reports} == {"prepare", "language", "statistics", "report"}
