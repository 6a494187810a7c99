"""The dedicated model replica, in-process without Ray: what it tells its inference thread
about each batch. The thread count is chosen by seconds per *input*, so a batch of 4 must count
as 4 inputs (a batch counted as one input looks 4 times slower than a batch of 1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from deployments.common.settings import ModelAppArgs
from deployments.model.deployment import ModelDeployment
from tests.fixtures.specs import tiny_spec


def test_each_batch_reports_how_many_inputs_it_ran(cat_png: bytes, monkeypatch) -> None:
    replica_class = ModelDeployment.func_or_class
    replica = replica_class(ModelAppArgs(model=tiny_spec()))
    counted: list[int] = []
    run_batch = replica._executor.run_batch

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        counted.append(kwargs.get("inputs", 1))  # 1: what the executor assumed when not told
        return await run_batch(fn, *args, **kwargs)

    monkeypatch.setattr(replica._executor, "run_batch", spy)
    entries = [(replica._handler.preprocess(cat_png), time.perf_counter()) for _ in range(4)]
    # The batch function itself, as @serve.batch calls it with the 4 requests it gathered
    # (Serve's queue needs a running replica; its closure must stay unused for pickling).
    answers = asyncio.run(replica_class._run_batch.__wrapped__(replica, entries))
    assert [answer.batch_size for answer in answers] == [4, 4, 4, 4]
    assert counted == [4]
