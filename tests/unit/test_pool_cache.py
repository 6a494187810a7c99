"""A pool replica's model cache: LRU eviction under a memory budget, shared loads, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.pool.cache import MIB, LoadedModel, ModelCache
from handlers.errors import InsufficientResourcesError, ModelLoadError


class Loader:
    """Loads models of the given sizes (MB), slowly enough to overlap; counts loads."""

    def __init__(self, sizes: dict[str, float], delay_s: float = 0.01) -> None:
        self.sizes, self.delay_s = sizes, delay_s
        self.loads: list[str] = []
        self.broken: set[str] = set()

    async def __call__(self, model_id: str) -> LoadedModel:
        self.loads.append(model_id)
        await asyncio.sleep(self.delay_s)
        if model_id in self.broken:
            raise ModelLoadError(f"{model_id}: weights are corrupt")
        return LoadedModel(model_id, object(), int(self.sizes.get(model_id, 1) * MIB), self.delay_s)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_least_recently_used_models_go_first_when_the_budget_is_full() -> None:
    loader = Loader({"a": 4, "b": 4, "c": 4})
    announced: list[list[str]] = []
    cache = ModelCache(10 * MIB, None, loader, announced.append)

    async def scenario() -> tuple[Any, ...]:
        await cache.get("a")
        await cache.get("b")
        await cache.get("a")  # a is now the most recently used
        _, outcome = await cache.get("c")  # 12 MB > 10 MB: b goes
        return outcome

    outcome = run(scenario())
    assert outcome.evicted == ("b",) and outcome.seconds > 0
    assert cache.loaded_ids() == ["a", "c"] and cache.used_bytes == 8 * MIB
    assert (cache.loads, cache.evictions) == (3, 1)
    assert announced[-1] == ["a", "c"]  # Serve's router hears what the replica holds


def test_a_count_limit_evicts_too() -> None:
    cache = ModelCache(100 * MIB, 2, Loader({}))

    async def scenario() -> tuple[str, ...]:
        for model_id in ("a", "b"):
            await cache.get(model_id)
        return (await cache.get("c"))[1].evicted

    assert run(scenario()) == ("a",)


def test_concurrent_requests_share_one_load_and_only_the_first_reports_it() -> None:
    loader = Loader({}, delay_s=0.05)
    cache = ModelCache(10 * MIB, None, loader)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(cache.get("a") for _ in range(10)))

    results = run(scenario())
    assert loader.loads == ["a"]
    assert sum(1 for _, outcome in results if outcome is not None) == 1
    assert len({id(model) for model, _ in results}) == 1


def test_a_cancelled_request_does_not_abandon_the_load() -> None:
    loader = Loader({}, delay_s=0.05)
    cache = ModelCache(10 * MIB, None, loader)

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(cache.get("a"))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.1)
        return cache.loaded_ids()

    assert run(scenario()) == ["a"]


def test_a_failed_load_is_not_retried_at_once() -> None:
    loader = Loader({})
    loader.broken.add("bad")
    cache = ModelCache(10 * MIB, None, loader, failure_ttl_s=0.1)

    async def scenario() -> int:
        for _ in range(3):
            with pytest.raises(ModelLoadError, match="corrupt"):
                await cache.get("bad")
        loads_meanwhile = len(loader.loads)
        await asyncio.sleep(0.15)
        loader.broken.clear()
        await cache.get("bad")
        return loads_meanwhile

    assert run(scenario()) == 1
    assert cache.loaded_ids() == ["bad"]


def test_a_model_bigger_than_the_budget_is_refused_and_evicts_nothing() -> None:
    cache = ModelCache(10 * MIB, None, Loader({"a": 4, "huge": 12}))

    async def scenario() -> None:
        await cache.get("a")
        await cache.get("huge")

    with pytest.raises(
        InsufficientResourcesError, match=r"needs about 12\.0 MB, more than the pool's memory budget"
    ):
        run(scenario())
    assert cache.loaded_ids() == ["a"]


def test_an_unregistered_model_is_evicted_on_request() -> None:
    cache = ModelCache(10 * MIB, None, Loader({}))
    run(cache.get("a"))
    assert cache.evict("a") and not cache.evict("a")
    assert cache.loaded_ids() == [] and cache.used_bytes == 0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cold_loads_beyond_the_pools_rate_are_refused_at_once_and_loaded_models_keep_answering() -> None:
    from deployments.pool.admission import ColdLoadGate
    from handlers.errors import ModelNotReadyError

    clock = Clock()
    loader = Loader({})
    gate = ColdLoadGate("small", per_s=0.5, burst=2, clock=clock)
    cache = ModelCache(10 * MIB, 2, loader, gate=gate)

    async def scenario() -> ModelNotReadyError:
        await cache.get("a")
        await cache.get("b")  # the burst is spent
        with pytest.raises(ModelNotReadyError) as refused:
            await cache.get("c")
        for _ in range(5):  # the models the replica holds answer as before
            assert (await cache.get("a"))[1] is None and (await cache.get("b"))[1] is None
        clock.now += 2.0  # one more load per 2 s
        await cache.get("c")
        return refused.value

    refused = run(scenario())
    assert loader.loads == ["a", "b", "c"]  # c was not loaded while the pool was saturated
    assert refused.status == 503 and refused.headers() == {"Retry-After": "2"}
    assert "Pool small is saturated" in refused.message and "cold_loads_per_s" in refused.message
    assert cache.loaded_ids() == ["b", "c"]  # a refused request evicted nothing


def test_loads_waiting_for_the_inference_thread_are_bounded() -> None:
    from deployments.pool.admission import ColdLoadGate
    from handlers.errors import ModelNotReadyError

    loader = Loader({}, delay_s=0.05)
    cache = ModelCache(100 * MIB, None, loader, gate=ColdLoadGate("small", per_s=1000, burst=2))

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(cache.get(m) for m in ("a", "b", "c")), return_exceptions=True)

    results = run(scenario())
    assert isinstance(results[2], ModelNotReadyError)
    assert "2 cold loads are already waiting" in results[2].message
    assert loader.loads == ["a", "b"]


def test_a_model_measured_bigger_than_the_budget_is_not_loaded_again() -> None:
    loader = Loader({"huge": 12})
    cache = ModelCache(10 * MIB, None, loader, failure_ttl_s=0.0)

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(InsufficientResourcesError, match=r"needs about 12\.0 MB"):
                await cache.get("huge")

    run(scenario())
    assert loader.loads == ["huge"]  # refused from its recorded size, before loading


def test_room_is_made_before_a_cold_load_from_its_estimate() -> None:
    used_while_loading: dict[str, int] = {}

    class Watching(Loader):
        async def __call__(self, model_id: str) -> LoadedModel:
            used_while_loading[model_id] = cache.used_bytes
            return await super().__call__(model_id)

    async def estimate(model_id: str) -> int:
        return 6 * MIB  # e.g. its weights file

    loader = Watching({"a": 4, "b": 4, "c": 6})
    cache = ModelCache(10 * MIB, None, loader, estimate=estimate)

    async def scenario() -> tuple[str, ...]:
        await cache.get("a")
        await cache.get("b")
        return (await cache.get("c"))[1].evicted

    assert run(scenario()) == ("a",)
    # While c loaded, the replica held no more than the budget minus c's estimate.
    assert used_while_loading["c"] == 4 * MIB
    assert cache.loaded_ids() == ["b", "c"] and cache.used_bytes == 10 * MIB


def test_a_models_estimate_is_its_weight_files_and_the_load_reuses_the_fetched_spec(tmp_path: Any) -> None:
    from deployments.pool.loader import PooledLoader

    (tmp_path / "weights.pth").write_bytes(b"w" * 3000)
    (tmp_path / "notes.txt").write_bytes(b"n" * 100_000)  # not weights: not counted
    asked: list[str] = []

    async def specs(model_id: str) -> dict[str, Any]:
        asked.append(model_id)
        return {"base_dir": str(tmp_path)}

    loader = PooledLoader("small", specs, executor=None, overhead_mb=1.0)  # type: ignore[arg-type]
    loaded: list[dict[str, Any]] = []

    async def load(model_id: str, spec: dict[str, Any]) -> LoadedModel:
        loaded.append(spec)
        return LoadedModel(model_id, object(), 1, 0.0)

    loader.load = load  # type: ignore[method-assign]

    async def scenario() -> int:
        estimate = await loader.estimate("m")
        await loader("m")
        return estimate

    assert run(scenario()) == 3000 + MIB
    assert asked == ["m"] and loaded == [{"base_dir": str(tmp_path)}]  # one look-up for both
