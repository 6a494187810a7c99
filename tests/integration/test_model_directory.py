"""How the ingress keeps its model table current without polling Serve every second.

Serve's status is faked (it counts the snapshots taken); the refresh policies are the real
ones: a lookup that misses answers from a snapshot taken after it arrived, bursts of misses
share snapshots, routing changes announced by the management part arrive through the long
poll at once (a pooled model's registration without any snapshot of Serve), health checks
never read a stale table, and an idle server takes only the slow safety-poll snapshots.
"""

from __future__ import annotations

import asyncio

import pytest

from deployments.common.model_table import ModelTable, ModelVersionState, PoolState
from deployments.common.routing import ModelRouting, PooledEntry, RoutingUpdate
from deployments.common.settings import IngressArgs
from deployments.inference.model_directory import ModelDirectory
from deployments.inference.router import POOL_REPORTS_TTL_S, ServeRouter
from deployments.management.routing_feed import RoutingFeed
from handlers.errors import ModelNotFoundError


class FakeServe:
    """One model version whose replica count the test changes, and a pool; counts snapshots."""

    def __init__(self) -> None:
        self.running = 0
        self.present = True
        self.calls = 0

    async def snapshot(self) -> ModelTable:
        self.calls += 1
        table = ModelTable()
        if self.present:
            status = "RUNNING" if self.running else "DEPLOYING"
            state = ModelVersionState("tiny", "1.0", "tiny@1.0", "model:tiny@1.0", status, self.running)
            table.versions["tiny"] = {"1.0": state}
        table.pools["small"] = PoolState("small", "pool-small", "pool:small", "RUNNING", 1)
        return table


class FakeManagement:
    """The management part's long poll over a real RoutingFeed; counts the records it sends."""

    def __init__(self) -> None:
        self.feed = RoutingFeed()
        self.models: dict[str, ModelRouting] = {}
        self.records_sent = 0

    async def routing_changes(self, since: int, timeout_s: float, epoch: str) -> RoutingUpdate:
        await self.feed.wait_past(since, timeout_s, epoch)
        names, serve = self.feed.changes_since(since, epoch)
        full = names is None
        chosen = dict(self.models) if full else {name: self.models.get(name) for name in names or ()}
        self.records_sent += len(chosen)
        return RoutingUpdate(self.feed.epoch, self.feed.version, full, serve, chosen)


def router_over(
    fake: FakeServe, management: FakeManagement | None = None, safety_s: float = 60
) -> ServeRouter:
    changes = management.routing_changes if management else None
    return ServeRouter(IngressArgs(), ModelDirectory(fake.snapshot, changes, safety_s))


@pytest.fixture
def fake() -> FakeServe:
    return FakeServe()


def test_a_version_that_just_became_ready_is_found_at_once(fake: FakeServe) -> None:
    async def scenario() -> str:
        router = router_over(fake)
        await router.start()  # snapshot: DEPLOYING, no replica
        fake.running = 1  # the register's own poll sees the replica: it returns 200 now
        state = await router.resolve("tiny", None)  # immediately after the last snapshot
        router.directory.stop()
        return state.app_status

    assert asyncio.run(scenario()) == "RUNNING"


def test_a_burst_of_misses_shares_a_few_snapshots(fake: FakeServe) -> None:
    fake.present = False

    async def scenario() -> list[BaseException | None]:
        router = router_over(fake)
        await router.start()
        fake.calls = 0

        async def miss() -> BaseException | None:
            try:
                await router.resolve("nosuch", None)
            except ModelNotFoundError as exc:
                return exc
            return None

        outcomes = await asyncio.gather(*(miss() for _ in range(50)))
        router.directory.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ModelNotFoundError) for o in outcomes)
    assert fake.calls <= 2, f"{fake.calls} snapshots for one burst of 50 misses"


def test_an_announced_change_is_followed_at_once(fake: FakeServe) -> None:
    fake.running = 1

    async def scenario() -> tuple[str, int]:
        management = FakeManagement()
        router = router_over(fake, management)
        await router.start()
        await asyncio.sleep(0.05)
        before = router.directory.table.default_version("tiny")
        fake.calls = 0
        management.models = {"tiny": ModelRouting(default="2.0")}
        management.feed.announce()  # e.g. a new version deployed
        await asyncio.sleep(0.05)
        after = router.directory.table.defaults.get("tiny", "")
        router.directory.stop()
        return f"{before}->{after}", fake.calls

    change, snapshots = asyncio.run(scenario())
    assert change == "1.0->2.0"
    assert snapshots == 1  # one snapshot per announced change, none in between


def test_an_idle_server_takes_only_safety_poll_snapshots(fake: FakeServe) -> None:
    async def scenario() -> int:
        router = router_over(fake, FakeManagement(), safety_s=0.2)
        await router.start()
        fake.calls = 0
        await asyncio.sleep(1.05)
        router.directory.stop()
        return fake.calls

    assert 4 <= asyncio.run(scenario()) <= 6  # about one per 0.2 s, not one per request or second


def test_health_checks_never_read_a_stale_table(fake: FakeServe) -> None:
    fake.running = 1

    async def scenario() -> tuple[dict, dict]:
        router = router_over(fake)
        await router.start()
        healthy = (await router.health_table()).unhealthy()
        fake.running = 0  # the replica dies; nobody announces it
        await asyncio.sleep(1.1)  # older than HEALTH_MAX_AGE_S
        unhealthy = (await router.health_table()).unhealthy()
        router.directory.stop()
        return healthy, unhealthy

    healthy, unhealthy = asyncio.run(scenario())
    assert healthy == {}
    assert "tiny/1.0" in unhealthy


def test_pooled_registrations_reach_the_ingress_without_snapshots(fake: FakeServe) -> None:
    fake.running = 1

    async def scenario() -> tuple[str, str | None, int, int]:
        management = FakeManagement()
        router = router_over(fake, management)
        await router.start()
        await asyncio.sleep(0.05)
        fake.calls, management.records_sent = 0, 0
        for i in range(200):  # a bulk registration: one small update per model
            name = f"m{i}"
            management.models[name] = ModelRouting("1.0", {"1.0": PooledEntry("small", f"{name}@1.0#t")})
            management.feed.announce([name], serve=False)
            await asyncio.sleep(0)
        # Resolved at once, even before the long poll has delivered the last registration.
        management.models["late"] = ModelRouting(None, {"1.0": PooledEntry("small", "late@1.0#t")})
        management.feed.announce(["late"], serve=False)
        state = await router.resolve("late", None)
        await asyncio.sleep(0.05)
        pooled = router.directory.table.lookup("m199", None).model_id
        router.directory.stop()
        return f"{state.pool}:{state.model_id}", pooled, fake.calls, management.records_sent

    found, pooled, snapshots, records = asyncio.run(scenario())
    assert found == "small:late@1.0#t" and pooled == "m199@1.0#t"
    assert snapshots <= 1  # only the miss of "late" may take one; registrations take none
    assert records <= 205  # each model's record sent about once, not the whole table per change


def test_made_up_names_cost_at_most_one_snapshot_a_second(fake: FakeServe) -> None:
    """Issue 24: requests for unknown names, one after another, used to force a serve.status()
    every 0.1 s; without a routing change the table answers them for a second."""
    fake.running = 1

    async def scenario() -> tuple[int, int]:
        management = FakeManagement()
        router = router_over(fake, management)
        await router.start()
        await asyncio.sleep(0.05)
        fake.calls = 0
        misses = 0
        loop = asyncio.get_running_loop()
        began = loop.time()
        while loop.time() - began < 1.5:
            try:
                await router.resolve(f"made-up-{misses}", None)
            except ModelNotFoundError:
                misses += 1
            await asyncio.sleep(0.01)
        router.directory.stop()
        return fake.calls, misses

    snapshots, misses = asyncio.run(scenario())
    assert misses >= 10
    assert snapshots <= 2, f"{snapshots} snapshots of Serve for {misses} made-up names in 1.5 s"


def test_a_name_registered_just_before_the_lookup_is_still_found(fake: FakeServe) -> None:
    """The unknown-name path still finds a model whose registration the long poll has not
    delivered yet: the routing changes say the table is behind, so it takes a snapshot."""
    fake.present = False

    async def scenario() -> str:
        management = FakeManagement()
        router = router_over(fake, management)
        await router.start()
        await asyncio.sleep(0.05)
        with pytest.raises(ModelNotFoundError):
            await router.resolve("tiny", None)  # the table is fresh: no snapshot for this miss
        fake.present, fake.running = True, 1  # registered and ready; announced:
        management.feed.announce(["tiny"], serve=True)
        state = await router.resolve("tiny", None)  # at once, before the long poll catches up
        router.directory.stop()
        return state.app_status

    assert asyncio.run(scenario()) == "RUNNING"


def test_metrics_scrapes_share_one_report_per_pool_replica(fake: FakeServe) -> None:
    """Issue 24: every /metrics scrape called every pool replica; now at most one round of
    calls per POOL_REPORTS_TTL_S, shared by concurrent scrapes."""

    class CountingPools:
        calls = 0

        async def reports(self, pool: PoolState) -> list[dict]:
            CountingPools.calls += 1
            await asyncio.sleep(0.05)
            return [{"replica": "r1", "models": ["a"], "used_bytes": 1, "budget_bytes": 2}]

    async def scenario() -> tuple[dict, int, int]:
        router = router_over(fake)
        router.pools = CountingPools()  # type: ignore[assignment]
        await router.start()
        answers = await asyncio.gather(*(router.pool_reports() for _ in range(20)))
        for _ in range(20):
            await router.pool_reports()
        within_ttl = CountingPools.calls
        await asyncio.sleep(POOL_REPORTS_TTL_S + 0.1)
        await router.pool_reports()
        router.directory.stop()
        return answers[-1], within_ttl, CountingPools.calls

    report, within_ttl, after = asyncio.run(scenario())
    assert report == {"small": [{"replica": "r1", "models": ["a"], "used_bytes": 1, "budget_bytes": 2}]}
    assert within_ttl == 1
    assert after == 2
