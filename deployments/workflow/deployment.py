"""One workflow as a Ray Serve deployment: its DAG, its function nodes, handles to its models.

Model nodes are called exactly as ``/predictions`` calls a model (the ingress's
:class:`deployments.inference.router.ServeRouter`: the model's own replicas, batching,
pools and traffic policy, deadlines and error mapping). Function nodes run here, on threads.
The ingress sends each ``/wfpredict`` request here and records metrics and access-log lines
from the node reports of the answer.
"""

from __future__ import annotations

import dataclasses
import logging

from ray import serve

from deployments.common.messages import Answer
from deployments.common.settings import IngressArgs
from deployments.common.workflow_answer import WorkflowAnswer, WorkflowRequest, compose, start_input
from deployments.common.workflow_dag import DagRunner, Node, NodeCall, NodeInput, Payload
from deployments.common.workflow_spec import ModelNode, WorkflowArgs, dag_nodes
from deployments.inference.management_link import ManagementLink
from deployments.inference.router import ServeRouter
from deployments.workflow.functions import (
    OCTETS,
    encode_output,
    function_call,
    function_context,
    handler_path,
    initialize,
    load_functions,
)
from handlers.torchserve.form_fields import encode_form

logger = logging.getLogger("ray.serve")
# The DAG runner gives each try of a node its own deadline (timeout_ms); the router's is a
# backstop above the largest one.
ROUTER_TIMEOUT_S = 3600.0


@serve.deployment(graceful_shutdown_timeout_s=10, health_check_period_s=5)
class WorkflowDeployment:
    """Runs requests through one workflow's DAG."""

    async def __init__(self, args: WorkflowArgs) -> None:
        self._args = args
        self._router = ServeRouter(
            IngressArgs(request_timeout_s=ROUTER_TIMEOUT_S), routing_changes=ManagementLink().routing_changes
        )
        functions = load_functions(args.handler, args.function_nodes()) if args.function_nodes() else {}
        folder = (
            str(handler_path(args.handler).parent) if args.handler and args.handler.endswith(".py") else "."
        )
        nodes = {}
        for name in dag_nodes(args.dag):
            model = args.model_node(name)
            if model is not None:
                nodes[name] = Node(
                    name, self._model_call(model), model.model, model.retry_attempts, model.timeout_ms / 1000
                )
            else:
                context = function_context(args.name, name, folder)
                initialize(name, functions[name], context)
                call = function_call(functions[name], context)
                nodes[name] = Node(name, call, None, args.retry_attempts, args.timeout_ms / 1000)
        self._runner = DagRunner(args.dag, nodes)
        await self._router.start()
        logger.info("Workflow %s ready: %d nodes (%d functions)", args.name, len(nodes), len(functions))

    def _model_call(self, node: ModelNode) -> NodeCall:
        async def call(given: NodeInput) -> Payload:
            if len(given) == 1:
                (payload,) = given.values()
                body, content_type = payload.data, payload.content_type
            else:  # several parents: named fields, as TorchServe hands them to the handler
                body, content_type = encode_form({k: (p.data, p.content_type) for k, p in given.items()})
            state = await self._router.resolve(node.model, node.version)
            answer: Answer = await self._router.predict(state, body, content_type)
            output = encode_output(answer.result)
            return Payload(output.data, output.content_type, dataclasses.replace(answer, result=None))

        return call

    async def run(self, request: WorkflowRequest) -> WorkflowAnswer:
        """Answer one ``/wfpredict`` request (handle call); a node's failure is returned, not
        raised, so the ingress still gets the reports of the nodes that ran."""
        result = await self._runner.run(start_input(request))
        if result.error is not None:
            return WorkflowAnswer(b"", "", result.reports, result.error)
        answer = compose(result.outputs)
        return WorkflowAnswer(answer.data, answer.content_type or OCTETS, result.reports)

    def describe(self) -> dict:
        """The workflow's args as JSON (handle call): how ``GET /workflows`` describes a
        workflow declared in the Serve config."""
        return self._args.model_dump(mode="json")

    async def __del__(self) -> None:
        if hasattr(self, "_router"):
            self._router.directory.stop()
