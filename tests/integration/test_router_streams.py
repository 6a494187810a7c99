"""ServeRouter's streaming and explanation calls with fake Serve handles (no cluster): parts
in order, the call cancelled when the consumer leaves, a deadline per part."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.common.model_table import ModelVersionState
from deployments.common.settings import IngressArgs
from deployments.inference.router import ServeRouter
from handlers.errors import RequestTimeoutError

STATE = ModelVersionState("speech", "1.0", "speech", "model:speech@1.0", "RUNNING", 1)


class FakeParts:
    """Stands in for a DeploymentResponseGenerator: async iterator of parts, cancellable."""

    def __init__(self, parts: list[Any], delay_s: float = 0.0) -> None:
        self.parts, self.delay_s, self.cancelled = list(parts), delay_s, False

    def __aiter__(self) -> FakeParts:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(self.delay_s)
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


def streaming_router(parts: FakeParts) -> ServeRouter:
    router = ServeRouter(IngressArgs(request_timeout_s=0.2))

    class Handle:
        def options(self, stream: bool = False) -> Handle:
            assert stream
            return self

        class predict_stream:  # mirrors handle.options(stream=True).predict_stream.remote(body, type)
            @staticmethod
            def remote(body: bytes, content_type: str | None) -> FakeParts:
                return parts

    router.handles.handle = lambda state: Handle()  # type: ignore[method-assign]
    return router


def test_parts_come_in_order_and_leaving_early_cancels_the_call() -> None:
    async def scenario() -> tuple[list[Any], list[Any], bool]:
        whole = FakeParts([1, 2, 3])
        everything = [part async for part in streaming_router(whole).stream(STATE, b"x", None)]
        early = FakeParts([1, 2, 3])
        stream = streaming_router(early).stream(STATE, b"x", None)
        first = [await stream.__anext__()]
        await stream.aclose()  # the client went away
        return everything, first, early.cancelled

    everything, first, cancelled = asyncio.run(scenario())
    assert everything == [1, 2, 3] and first == [1] and cancelled


def test_a_part_that_does_not_come_in_time_is_a_504() -> None:
    async def scenario() -> None:
        slow = FakeParts([1], delay_s=1.0)
        async for _ in streaming_router(slow).stream(STATE, b"x", None):
            pass

    with pytest.raises(RequestTimeoutError, match=r"did not answer within 0\.2s"):
        asyncio.run(scenario())
