"""The dedicated model replica, in-process without Ray: what it tells its inference thread
about each batch. The thread count is chosen by seconds per *input*, so a batch of 4 must count
as 4 inputs (a batch counted as one input looks 4 times slower than a batch of 1)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ray import serve

from deployments.common.settings import ModelAppArgs
from deployments.model.deployment import ModelDeployment
from tests.fixtures.specs import tiny_spec


def test_each_batch_reports_how_many_inputs_it_ran(cat_png: bytes, monkeypatch) -> None:
    counted: list[int] = []
    # Serve's batch queue reads its replica's settings once (to warn); there is no replica here.
    replica_context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica_context)

    async def scenario() -> list[Any]:
        replica = ModelDeployment.func_or_class(ModelAppArgs(model=tiny_spec()))
        replica.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 5.0, "wait_for_idle_model": False})
        run_batch = replica._executor.run_batch

        async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
            counted.append(kwargs.get("inputs", 1))  # today's default, had the caller left it out
            return await run_batch(fn, *args, **kwargs)

        monkeypatch.setattr(replica._executor, "run_batch", spy)
        # Four requests at once: the batch is full, so they run together.
        return await asyncio.gather(*(replica.predict(cat_png, "image/png") for _ in range(4)))

    answers = asyncio.run(scenario())
    assert [answer.batch_size for answer in answers] == [4, 4, 4, 4]
    assert counted == [4]
