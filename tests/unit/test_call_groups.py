"""Inputs that arrive together for one model version share one Serve call."""

from __future__ import annotations

import asyncio

import pytest

from deployments.inference.call_groups import CallGrouper, split
from handlers.errors import InferenceError


class FakeModel:
    """Answers each call after a short delay, recording the groups it received."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[bytes]] = []
        self.fail = fail

    async def send(self, items: list[tuple[bytes, str | None]], request_id: str) -> list[str]:
        self.calls.append([body for body, _ in items])
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("replica died")
        return [body.decode().upper() for body, _ in items]


def test_requests_of_one_turn_share_a_call_and_each_gets_its_answer() -> None:
    model = FakeModel()

    async def scenario() -> list[str]:
        grouper = CallGrouper(model.send, lambda: 1)
        return await asyncio.gather(*(grouper.submit(f"in{i}".encode(), None) for i in range(8)))

    assert asyncio.run(scenario()) == [f"IN{i}" for i in range(8)]
    assert model.calls == [[f"in{i}".encode() for i in range(8)]]


def test_a_request_alone_leaves_at_once() -> None:
    model = FakeModel()

    async def scenario() -> float:
        grouper = CallGrouper(model.send, lambda: 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await grouper.submit(b"a", None)
        await grouper.submit(b"b", None)
        return loop.time() - started

    assert asyncio.run(scenario()) < 0.1
    assert model.calls == [[b"a"], [b"b"]]


def test_groups_are_spread_over_the_replicas() -> None:
    model = FakeModel()

    async def scenario() -> None:
        grouper = CallGrouper(model.send, lambda: 2)
        await asyncio.gather(*(grouper.submit(str(i).encode(), None) for i in range(5)))

    asyncio.run(scenario())
    assert sorted(len(call) for call in model.calls) == [2, 3]


def test_a_failed_call_fails_every_input_of_its_group() -> None:
    model = FakeModel(fail=True)

    async def scenario() -> list[BaseException | str]:
        grouper = CallGrouper(model.send, lambda: 1)
        return await asyncio.gather(*(grouper.submit(b"x", None) for _ in range(3)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes)


@pytest.mark.parametrize(("count", "parts", "sizes"), [(1, 4, [1]), (8, 2, [4, 4]), (130, 1, [44, 43, 43])])
def test_split_sizes(count: int, parts: int, sizes: list[int]) -> None:
    groups = split(list(range(count)), parts)
    assert [len(g) for g in groups] == sizes
    assert sorted(x for g in groups for x in g) == list(range(count))


def test_a_call_answering_the_wrong_count_fails_its_inputs_instead_of_hanging() -> None:
    async def short(items: list[tuple[bytes, str | None]], request_id: str) -> list[str]:
        return ["only one"]

    async def scenario() -> list[BaseException | str]:
        grouper = CallGrouper(short, lambda: 1)
        submitted = (grouper.submit(b"x", None) for _ in range(3))
        return await asyncio.wait_for(asyncio.gather(*submitted, return_exceptions=True), 5)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, InferenceError) and "1 answers for 3 inputs" in o.message for o in outcomes)
