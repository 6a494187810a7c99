"""One client's bad input fails alone (issue 24, finding 3): whatever its decoding raises, the
other inputs of the same Serve call get their answers, and the input its own 4xx or 500; no Ray."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.common.messages import Answer, Rejected
from deployments.common.settings import PoolArgs
from deployments.model.deployment import ModelDeployment
from deployments.pool.deployment import PoolDeployment
from handlers.errors import BadInputError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.torchserve.adapter import request_row
from tests.fixtures.specs import scorer_spec

DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
HUGE_INT_JSON = b'{"features": [[' + b"9" * 5000 + b", 0, 0, 0]]}"


class RaisingHandler:
    """Decodes b"ok"; raises what the body names for anything else."""

    def preprocess(self, data: bytes, content_type: str | None = None) -> Any:
        failures = {
            b"recursion": RecursionError("maximum recursion depth exceeded"),
            b"memory": MemoryError(),
            b"value": ValueError("Exceeds the limit (4300 digits) for integer string conversion"),
            b"bug": KeyError("oops"),
            b"bad": BadInputError("not an image"),
        }
        if data in failures:
            raise failures[data]
        return data


async def fake_batch(entry: tuple) -> Answer:
    return Answer(entry[-2].decode(), 1)


def model_deployment() -> Any:
    deployment = object.__new__(ModelDeployment.func_or_class)
    deployment._handler = RaisingHandler()
    deployment._spec = ModelSpec.model_validate({"name": "m", "source": {"architecture": "resnet18"}})
    deployment._decoders = None  # the loop's default executor
    deployment._wait_for_idle = False
    deployment._run_batch = fake_batch
    return deployment


def pool_deployment() -> Any:
    deployment = object.__new__(PoolDeployment.func_or_class)

    class Loaded:
        handler = RaisingHandler()
        model_id = "m@1.0"

    async def model(model_id: str) -> tuple:
        return Loaded(), None

    deployment._args = PoolArgs.model_validate({"name": "p"})
    deployment._model = model
    deployment._decoders = None
    deployment._wait_for_idle = False
    deployment._run_batch = fake_batch
    return deployment


@pytest.mark.parametrize("make", [model_deployment, pool_deployment], ids=["model", "pool"])
def test_every_decode_failure_stays_with_its_input(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import serve

    monkeypatch.setattr(serve, "get_multiplexed_model_id", lambda: "m@1.0")
    deployment = make()
    bodies = [b"ok", b"recursion", b"memory", b"value", b"bug", b"bad", b"ok"]
    results = asyncio.run(deployment.predict_many([(body, None) for body in bodies]))
    assert [r.result for r in (results[0], results[-1])] == ["ok", "ok"]
    statuses = [r.error.status for r in results[1:-1]]
    assert all(isinstance(r, Rejected) for r in results[1:-1])
    assert statuses == [400, 500, 500, 500, 400]
    assert "nested too deeply" in results[1].error.message
    assert "KeyError" in results[4].error.message and "oops" not in results[4].error.message


def test_torchserve_rows_with_deep_json_are_400() -> None:
    with pytest.raises(BadInputError, match="nested too deeply"):
        request_row(DEEP_JSON, "application/json")


def test_tensor_handler_refuses_huge_json_integers_with_400() -> None:
    handler = create_handler(scorer_spec())
    with pytest.raises(BadInputError, match="more than 4300 digits"):
        handler.preprocess(HUGE_INT_JSON, "application/json")
