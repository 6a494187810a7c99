"""How ServeRouter turns what a Serve handle raises into statuses, and copies shadowed requests
(fake handles, no cluster)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from deployments.common.messages import Answer, Rejected
from deployments.common.model_table import ModelVersionState
from deployments.common.settings import IngressArgs
from deployments.inference.router import ServeRouter
from deployments.inference.shadow_traffic import MAX_SHADOWS_IN_FLIGHT
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


class Replicas:
    """Stands in for the model's replicas behind Serve handles: records every call (which
    deployment, which inputs) and answers each input with what it was sent, or with
    ``outcome`` (an exception, or a fixed response) when set."""

    def __init__(self, outcome: Any = None, delay_s: float = 0.0) -> None:
        self.outcome, self.delay_s = outcome, delay_s
        self.calls: list[tuple[str, list[tuple[bytes, str | None]]]] = []
        self.responses: list[FakeResponse] = []

    def handle(self, state: ModelVersionState) -> Any:
        replicas = self

        class Handle:
            class predict_many:  # mirrors handle.predict_many.remote([(body, content_type), ...])
                @staticmethod
                def remote(items: list) -> FakeResponse:
                    replicas.calls.append((state.deployment_name, list(items)))
                    answers = [
                        Rejected(BadInputError("not an image"))
                        if body == b"bad"
                        else Answer({"input": body}, len(items))
                        for body, _ in items
                    ]
                    response = FakeResponse(
                        answers if replicas.outcome is None else replicas.outcome, replicas.delay_s
                    )
                    replicas.responses.append(response)
                    return response

        return Handle()


def router_to(replicas: Replicas) -> ServeRouter:
    router = ServeRouter(IngressArgs(request_timeout_s=0.2))
    router.handles.handle = replicas.handle  # type: ignore[method-assign]
    router.directory.refresh_since = _no_refresh  # type: ignore[method-assign]
    return router


def predict(outcome: Any, body: bytes = b"x") -> Answer:
    async def scenario() -> Answer:
        return await router_to(Replicas(outcome)).predict(STATE, body, None)

    return asyncio.run(scenario())


async def _no_refresh(arrived: float) -> None:
    return None


def test_the_input_goes_to_its_version_and_the_answer_says_which() -> None:
    replicas = Replicas()

    async def scenario() -> Answer:
        return await router_to(replicas).predict(STATE, b"x", "image/png")

    assert asyncio.run(scenario()) == Answer({"input": b"x"}, 1, "1.0")
    assert replicas.calls == [("model:tiny@1.0", [(b"x", "image/png")])]


def test_inputs_arriving_together_share_one_call_and_each_gets_its_own_answer() -> None:
    replicas = Replicas()

    async def scenario() -> list[Any]:
        router = router_to(replicas)
        sent = (router.predict(STATE, body, None) for body in (b"a", b"bad", b"c"))
        return await asyncio.gather(*sent, return_exceptions=True)

    first, bad, last = asyncio.run(scenario())
    assert replicas.calls == [("model:tiny@1.0", [(b"a", None), (b"bad", None), (b"c", None)])]
    assert (first, last) == (Answer({"input": b"a"}, 3, "1.0"), Answer({"input": b"c"}, 3, "1.0"))
    assert isinstance(bad, BadInputError)  # refused alone: its batch-mates were answered


def test_a_replica_that_dies_mid_request_is_503_with_retry_after() -> None:
    with pytest.raises(ModelNotReadyError, match="lost the replica") as caught:
        predict(ActorDiedError())
    assert caught.value.retry_after_s


def test_a_full_queue_is_503_with_retry_after() -> None:
    with pytest.raises(ModelNotReadyError, match="overloaded") as caught:
        predict(BackPressureError(num_queued_requests=2, max_queued_requests=2))
    assert caught.value.retry_after_s


def test_past_the_deadline_is_504_and_the_request_is_cancelled() -> None:
    replicas = Replicas(delay_s=5)
    with pytest.raises(RequestTimeoutError, match=r"within 0\.2s"):
        asyncio.run(router_to(replicas).predict(STATE, b"x", None))
    assert [response.cancelled for response in replicas.responses] == [True]


def test_rejected_input_is_raised_as_its_own_error() -> None:
    with pytest.raises(BadInputError, match="not an image"):
        predict(None, b"bad")


def test_a_shadowed_request_answers_from_its_version_and_copies_to_the_shadow() -> None:
    outcomes: list[tuple[str, str, str]] = []
    called: list[str] = []

    async def scenario() -> Answer:
        router = ServeRouter(
            IngressArgs(), on_shadow=lambda m, v, outcome, s: outcomes.append((m, v, outcome))
        )

        def handle(state: ModelVersionState) -> Any:
            class Handle:
                class predict_many:
                    @staticmethod
                    def remote(items: list) -> FakeResponse:
                        called.append(state.version)
                        if state.version == "2.0":
                            return FakeResponse([Rejected(BadInputError("no"))], delay_s=0.01)
                        return FakeResponse([Answer({"a": 1.0}, 1)])

            return Handle()

        router.handles.handle = handle  # type: ignore[method-assign]
        shadow = dataclasses.replace(STATE, version="2.0", deployment_name="model:tiny@2.0")
        answer = await router.predict(dataclasses.replace(STATE, shadow=shadow), b"x", None)
        await asyncio.gather(*router.shadows.background)  # the copy finishes in the background
        router.shadows.in_flight = MAX_SHADOWS_IN_FLIGHT  # a slow shadow: copies are skipped
        await router.predict(dataclasses.replace(STATE, shadow=shadow), b"x", None)
        return answer

    answer = asyncio.run(scenario())
    assert answer.version == "1.0"  # the client's answer never comes from the shadow
    assert sorted(called) == ["1.0", "1.0", "2.0"]  # one copy: the second was skipped
    assert outcomes == [("tiny", "2.0", "400"), ("tiny", "2.0", "skipped")]
