"""How ServeRouter turns what a Serve handle raises into statuses (fake handles, no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from deployments.common.messages import Answer, Rejected
from deployments.common.model_table import ModelVersionState
from deployments.common.settings import IngressArgs
from deployments.inference.router import ServeRouter
from handlers.errors import BadInputError, ModelNotReadyError, RequestTimeoutError

STATE = ModelVersionState("tiny", "1.0", "tiny", "model:tiny@1.0", "RUNNING", 1)


class FakeResponse:
    """Stands in for a DeploymentResponse: awaitable, cancellable."""

    def __init__(self, outcome: Any, delay_s: float = 0.0) -> None:
        self.outcome, self.delay_s, self.cancelled = outcome, delay_s, False

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._run().__await__()

    async def _run(self) -> Any:
        await asyncio.sleep(self.delay_s)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


def router_answering(response: FakeResponse) -> ServeRouter:
    router = ServeRouter(IngressArgs(request_timeout_s=0.2))

    class Handle:
        class predict_many:  # mirrors handle.predict_many.remote([(body, content_type), ...])
            @staticmethod
            def remote(items: list) -> FakeResponse:
                return response

    router._handle = lambda state: Handle()  # type: ignore[method-assign]
    return router


def predict(response: FakeResponse) -> Answer:
    async def scenario() -> Answer:
        router = router_answering(response)
        router.directory.refresh_since = _no_refresh  # type: ignore[method-assign]
        return await router.predict(STATE, b"x", None)

    return asyncio.run(scenario())


async def _no_refresh(arrived: float) -> None:
    return None


def test_answer_carries_the_version() -> None:
    assert predict(FakeResponse([Answer({"a": 1.0}, 2)])) == Answer({"a": 1.0}, 2, "1.0")


def test_a_replica_that_dies_mid_request_is_503_with_retry_after() -> None:
    with pytest.raises(ModelNotReadyError, match="lost the replica") as caught:
        predict(FakeResponse(ActorDiedError()))
    assert caught.value.retry_after_s


def test_a_full_queue_is_503_with_retry_after() -> None:
    with pytest.raises(ModelNotReadyError, match="overloaded") as caught:
        predict(FakeResponse(BackPressureError(num_queued_requests=2, max_queued_requests=2)))
    assert caught.value.retry_after_s


def test_past_the_deadline_is_504_and_the_request_is_cancelled() -> None:
    response = FakeResponse([Answer({}, 1)], delay_s=5)
    with pytest.raises(RequestTimeoutError, match=r"within 0\.2s"):
        predict(response)
    assert response.cancelled


def test_rejected_input_is_raised_as_its_own_error() -> None:
    with pytest.raises(BadInputError, match="not an image"):
        predict(FakeResponse([Rejected(BadInputError("not an image"))]))
