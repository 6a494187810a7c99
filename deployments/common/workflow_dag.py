"""Run one request through a workflow's DAG, each node as soon as its parents are done. No Ray.

Data moves as TorchServe moves it: the start node gets the request's parameters (a raw body as
``body``, multipart fields by name); a node with one parent gets that parent's output as
``body``; a node with several parents gets each parent's output under the parent's name.
Branches that do not depend on each other run concurrently (one asyncio task per node). Each
try of a node has its deadline (``timeout_ms``) and a node failing with a 5xx or a timeout is
tried again up to ``retry_attempts`` times, as TorchServe does; a 4xx is not retried. The first
node to fail ends the run: the other nodes in flight are cancelled and the error names the node
and keeps its status (:class:`handlers.errors.WorkflowNodeError`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.common.workflow_spec import check_dag, leaves, parents_of
from handlers.errors import RaytorchError, WorkflowNodeError


@dataclass(frozen=True)
class Payload:
    """One parameter of a node's input, or a node's output: bytes and their media type.
    ``answer``: a model node's full answer (version, batch size, stage timings), for metrics."""

    data: bytes
    content_type: str | None = None
    answer: Any = field(default=None, compare=False)


NodeInput = dict[str, Payload]  # TorchServe's parameter name -> value
NodeCall = Callable[[NodeInput], Awaitable[Payload]]


@dataclass(frozen=True)
class Node:
    """A runnable node: ``call`` answers one input; ``model`` names the model it calls (None for
    a function node)."""

    name: str
    call: NodeCall
    model: str | None = None
    retry_attempts: int = 1
    timeout_s: float = 10.0


@dataclass(frozen=True)
class NodeReport:
    """How one node went, for metrics and the access log."""

    node: str
    model: str | None
    status: int
    seconds: float
    attempts: int
    answer: Any = None  # a model node's Answer (deployments.common.messages), when it answered


@dataclass
class DagResult:
    """The leaves' outputs (DAG order), every node that ran, and the error that ended the run."""

    outputs: dict[str, Payload] = field(default_factory=dict)
    reports: list[NodeReport] = field(default_factory=list)
    error: WorkflowNodeError | None = None


class DagRunner:
    """Runs requests through one DAG of :class:`Node`."""

    def __init__(self, dag: dict[str, list[str]], nodes: dict[str, Node]) -> None:
        self.order = check_dag(dag)
        missing = [name for name in self.order if name not in nodes]
        if missing:
            raise ValueError(f"no callable for nodes {', '.join(missing)}")
        self.dag = dag
        self.nodes = nodes
        self.parents = parents_of(dag)
        self.leaves = leaves(dag)

    async def run(self, request: NodeInput) -> DagResult:
        """Run ``request`` (the start node's input) through the DAG."""
        result = DagResult()
        outputs: dict[str, Payload] = {}
        running: dict[asyncio.Task[Payload], str] = {}
        waiting = {name: len(self.parents[name]) for name in self.order}

        def start(name: str, given: NodeInput) -> None:
            running[asyncio.ensure_future(self._attempts(self.nodes[name], given, result))] = name

        start(self.order[0], request)
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = running.pop(task)
                    error = task.exception()
                    if error is not None:
                        result.error = _as_node_error(self.nodes[name], error)
                        return result
                    outputs[name] = task.result()
                    for child in self.dag.get(name, []):
                        waiting[child] -= 1
                        if waiting[child] == 0:
                            start(child, self._input_of(child, outputs))
        finally:
            for task in running:  # a failed node ends the run: its siblings stop
                task.cancel()
        result.outputs = {name: outputs[name] for name in self.leaves}
        return result

    def _input_of(self, name: str, outputs: dict[str, Payload]) -> NodeInput:
        # Outputs travel as bare bytes (no media type), as TorchServe passes them: handler
        # files written for it decode them themselves.
        parents = self.parents[name]
        if len(parents) == 1:
            return {"body": Payload(outputs[parents[0]].data)}
        return {parent: Payload(outputs[parent].data) for parent in parents}

    async def _attempts(self, node: Node, given: NodeInput, result: DagResult) -> Payload:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                output = await asyncio.wait_for(node.call(given), node.timeout_s)
            except Exception as exc:
                error = _as_node_error(node, exc)
                if error.status >= 500 and attempt <= node.retry_attempts:
                    continue
                result.reports.append(
                    NodeReport(node.name, node.model, error.status, time.perf_counter() - started, attempt)
                )
                raise error from None
            except asyncio.CancelledError:
                result.reports.append(
                    NodeReport(node.name, node.model, 499, time.perf_counter() - started, attempt)
                )
                raise
            result.reports.append(
                NodeReport(node.name, node.model, 200, time.perf_counter() - started, attempt, output.answer)
            )
            return output


def _as_node_error(node: Node, exc: BaseException) -> WorkflowNodeError:
    """The workflow's answer when ``node`` failed with ``exc``: its status, type and message."""
    if isinstance(exc, WorkflowNodeError):
        return exc
    what = f'Workflow node "{node.name}"' + (f' (model "{node.model}")' if node.model else "")
    if isinstance(exc, asyncio.TimeoutError):
        return WorkflowNodeError(
            f"{what} did not answer within {node.timeout_s:g}s", 504, node.name, "RequestTimeoutException"
        )
    if isinstance(exc, RaytorchError):
        return WorkflowNodeError(
            f"{what} failed: {exc.message}",
            exc.status,
            node.name,
            exc.type_name,
            retry_after_s=exc.retry_after_s,
        )
    return WorkflowNodeError(f"{what} failed: {type(exc).__name__}: {exc}", 500, node.name)
