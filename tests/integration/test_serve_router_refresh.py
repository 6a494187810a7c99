"""A lookup that misses answers from a snapshot taken after the request arrived: right after a
synchronous register returns, the first prediction must not get a stale 503 or 404. Serve's
status is faked; the refresh logic is the real one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from deployments import serve_router
from deployments.serve_router import ServeRouter
from deployments.settings import IngressArgs
from handlers.errors import ModelNotFoundError


class FakeServe:
    """serve.status() of one app whose replica count the test changes; counts the calls."""

    def __init__(self) -> None:
        self.running = 0
        self.present = True
        self.calls = 0

    def status(self) -> SimpleNamespace:
        self.calls += 1
        deployment = SimpleNamespace(replica_states={"RUNNING": self.running}, message="")
        app = SimpleNamespace(
            status="RUNNING" if self.running else "DEPLOYING", deployments={"model:tiny@1.0": deployment}
        )
        return SimpleNamespace(applications={"tiny@1.0": app} if self.present else {})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeServe:
    fake = FakeServe()
    monkeypatch.setattr(serve_router.serve, "status", fake.status)
    return fake


def test_a_version_that_just_became_ready_is_found_at_once(fake: FakeServe) -> None:
    async def scenario() -> str:
        router = ServeRouter(IngressArgs(discovery_interval_s=60))
        await router.start()  # snapshot: DEPLOYING, no replica
        fake.running = 1  # the register's own poll sees the replica: it returns 200 now
        state = await router.lookup("tiny", None)  # immediately after the last snapshot
        return state.app_status

    assert asyncio.run(scenario()) == "RUNNING"


def test_a_burst_of_misses_shares_a_few_snapshots(fake: FakeServe) -> None:
    fake.present = False

    async def scenario() -> list[BaseException | None]:
        router = ServeRouter(IngressArgs(discovery_interval_s=60))
        await router.start()
        fake.calls = 0

        async def miss() -> BaseException | None:
            try:
                await router.lookup("nosuch", None)
            except ModelNotFoundError as exc:
                return exc
            return None

        return await asyncio.gather(*(miss() for _ in range(50)))

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ModelNotFoundError) for o in outcomes)
    assert fake.calls <= 2, f"{fake.calls} serve.status() calls for one burst of 50 misses"
