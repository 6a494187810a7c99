"""Running a request through a workflow DAG with fake node callables (no Ray)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from deployments.common.workflow_answer import WorkflowRequest, compose, start_input
from deployments.common.workflow_dag import DagRunner, Node, NodeInput, Payload
from deployments.workflow.functions import encode_output, function_call, initialize, load_functions
from handlers.errors import BadInputError, ModelLoadError, ModelNotReadyError, WorkflowNodeError
from handlers.torchserve.adapter import request_row
from handlers.torchserve.form_fields import encode_form


def node(name: str, call, model: str | None = None, retries: int = 1, timeout_s: float = 5.0) -> Node:
    return Node(name, call, model, retries, timeout_s)


def upper(seen: list[NodeInput]):
    async def call(given: NodeInput) -> Payload:
        seen.append(given)
        return Payload(given["body"].data.upper(), "text/plain")

    return call


def test_sequential_pipeline_feeds_each_output_to_the_next_node_as_body() -> None:
    seen: list[NodeInput] = []

    async def exclaim(given: NodeInput) -> Payload:  # a model node: its answer goes to the metrics
        return Payload(given["body"].data + b"!", "text/plain", answer="the model's Answer")

    runner = DagRunner(
        {"first": ["second"]}, {"first": node("first", upper(seen)), "second": node("second", exclaim)}
    )
    result = asyncio.run(runner.run({"body": Payload(b"hello", "text/plain")}))
    assert result.error is None and result.outputs == {"second": Payload(b"HELLO!", "text/plain")}
    # The start node gets the request as it came; outputs travel on as bare bytes (TorchServe).
    assert seen[0]["body"] == Payload(b"hello", "text/plain")
    assert [r.node for r in result.reports] == ["first", "second"] and {r.status for r in result.reports} == {
        200
    }
    assert [r.answer for r in result.reports] == [None, "the model's Answer"]


def test_parallel_branches_run_concurrently_and_a_join_gets_each_parent_by_name() -> None:
    started: list[str] = []
    both_running = asyncio.Event

    async def main() -> tuple:
        gate = both_running()

        def branch(name: str):
            async def call(given: NodeInput) -> Payload:
                started.append(name)
                if len(started) == 2:
                    gate.set()
                await asyncio.wait_for(gate.wait(), 2)  # fails unless the other branch runs too
                return Payload(json.dumps({name: given["body"].data.decode()}).encode())

            return call

        joined: list[NodeInput] = []

        async def aggregate(given: NodeInput) -> Payload:
            joined.append(given)
            merged = {k: json.loads(v.data) for k, v in given.items()}
            return Payload(json.dumps(merged).encode(), "application/json")

        async def pre(given: NodeInput) -> Payload:
            return given["body"]

        dag = {"pre": ["left", "right"], "left": ["agg"], "right": ["agg"]}
        nodes = {
            "pre": node("pre", pre),
            "left": node("left", branch("left")),
            "right": node("right", branch("right")),
        }
        nodes["agg"] = node("agg", aggregate)
        return await DagRunner(dag, nodes).run({"body": Payload(b"x")}), joined

    result, joined = asyncio.run(main())
    assert result.error is None
    assert sorted(joined[0]) == ["left", "right"]
    assert json.loads(result.outputs["agg"].data) == {"left": {"left": "x"}, "right": {"right": "x"}}


def test_several_leaves_answer_a_json_object_by_node_name() -> None:
    body = compose({"a": Payload(b'{"x": 1}'), "b": Payload(b"plain text")})
    assert json.loads(body.data) == {"a": {"x": 1}, "b": "plain text"}
    assert compose({"only": Payload(b"It's a cat!", "text/plain")}).data == b"It's a cat!"


def test_a_failing_node_ends_the_run_with_its_own_status_and_name_and_cancels_its_siblings() -> None:
    cancelled = []

    async def bad(given: NodeInput) -> Payload:
        raise BadInputError("image is not decodable")

    async def slow(given: NodeInput) -> Payload:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return Payload(b"")

    async def pre(given: NodeInput) -> Payload:
        return given["body"]

    dag = {"pre": ["bad", "slow"], "bad": ["agg"], "slow": ["agg"]}
    nodes = {"pre": node("pre", pre), "bad": node("bad", bad, model="wf__bad"), "slow": node("slow", slow)}
    nodes["agg"] = node("agg", pre)
    result = asyncio.run(DagRunner(dag, nodes).run({"body": Payload(b"x")}))
    error = result.error
    assert isinstance(error, WorkflowNodeError)
    assert (error.status, error.node, error.type_name) == (400, "bad", "BadRequestException")
    assert error.message == 'Workflow node "bad" (model "wf__bad") failed: image is not decodable'
    assert error.to_dict()["node"] == "bad" and cancelled == [True]
    assert any(r.node == "bad" and r.status == 400 and r.attempts == 1 for r in result.reports)


def test_5xx_and_timeouts_are_retried_4xx_are_not() -> None:
    calls = {"flaky": 0, "slow": 0}

    async def flaky(given: NodeInput) -> Payload:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ModelNotReadyError("replica restarting")
        return Payload(b"ok")

    async def slow(given: NodeInput) -> Payload:
        calls["slow"] += 1
        await asyncio.sleep(1)
        return Payload(b"late")

    ok = asyncio.run(DagRunner({"flaky": []}, {"flaky": node("flaky", flaky, retries=2)}).run({}))
    assert ok.error is None and ok.reports[0].attempts == 3
    late = asyncio.run(
        DagRunner({"slow": []}, {"slow": node("slow", slow, retries=1, timeout_s=0.05)}).run({})
    )
    assert late.error is not None and late.error.status == 504 and calls["slow"] == 2
    assert "did not answer within 0.05s" in late.error.message


def test_function_nodes_are_called_torchserve_style(tmp_path: Path) -> None:
    handler = tmp_path / "wf_handler.py"
    handler.write_text(
        "import json\n"
        "def pre_processing(data, context):\n"
        "    return [data[0].get('data') or data[0].get('body')]\n"
        "def aggregate(data, context):\n"
        "    return [{k: json.loads(v) for k, v in data[0].items()}]\n"
        "def broken(data, context):\n"
        "    raise ValueError('no such label')\n"
        "def not_a_list(data, context):\n"
        "    return 'x'\n"
    )
    functions = load_functions(str(handler), ["pre_processing", "aggregate", "broken", "not_a_list"])
    pre = function_call(functions["pre_processing"], None)
    out = asyncio.run(pre(start_input(WorkflowRequest(b"hello", "text/plain"))))
    assert out == Payload(b"hello", "text/plain; charset=utf-8")
    agg = function_call(functions["aggregate"], None)
    out = asyncio.run(agg({"a": Payload(b"[1]"), "b": Payload(b'{"k": 2}')}))
    assert json.loads(out.data) == {"a": [1], "b": {"k": 2}}
    with pytest.raises(Exception, match="ValueError: no such label"):
        asyncio.run(function_call(functions["broken"], None)({"body": Payload(b"")}))
    with pytest.raises(Exception, match="one item per request"):
        asyncio.run(function_call(functions["not_a_list"], None)({"body": Payload(b"")}))
    with pytest.raises(Exception, match="defines no function missing"):
        load_functions(str(handler), ["missing"])
    # The start-up call without data (TorchServe's): a function that cannot take it fails the start.
    initialize("broken", lambda data, context: None, None)
    with pytest.raises(ModelLoadError, match="pre_processing failed to initialize: TypeError"):
        initialize("pre_processing", functions["pre_processing"], None)


def test_outputs_are_encoded_as_torchserve_sends_them() -> None:
    assert encode_output(b"\x00raw") == Payload(b"\x00raw", "application/octet-stream")
    assert encode_output("dog").data == b"dog"
    assert json.loads(encode_output({"a": 1}).data) == {"a": 1}


def test_several_parents_reach_a_torchserve_handler_as_named_fields() -> None:
    body, content_type = encode_form(
        {"pre_processing": (b"aGk=", None), "cat_dog_classification": (b"dog", None)}
    )
    row = request_row(body, content_type)
    assert row == {"pre_processing": bytearray(b"aGk="), "cat_dog_classification": bytearray(b"dog")}
    assert row["cat_dog_classification"].decode() == "dog"  # what TorchServe's dog-breed handler does
    # A multipart /wfpredict request reaches the start node as its fields.
    assert sorted(start_input(WorkflowRequest(body, content_type))) == [
        "cat_dog_classification",
        "pre_processing",
    ]
