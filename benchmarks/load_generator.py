"""A closed-loop HTTP load generator: ``concurrency`` clients, each sending its next request as
soon as the previous one is answered.

Only requests that *finish* inside the measuring window (after the warm-up) count, so start-up
transients do not flatter or punish a system. Everything is bounded: the window, a request
count cap, a per-request timeout and a grace period after which unfinished requests are cancelled.
It talks only to 127.0.0.1. aiohttp rather than httpx: on a 2-core machine the client shares
the CPU with the server, and aiohttp's C parser costs it less per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cpu_usage import per_request_ms

MAX_REQUESTS = 200_000
REQUEST_TIMEOUT_S = 60.0
DRAIN_GRACE_S = 10.0


@dataclass
class LoadResult:
    """What one concurrency level measured."""

    concurrency: int
    duration_s: float
    completed: int = 0
    errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: Counter = field(default_factory=Counter)
    # CPU ms per completed request by part of the stack (see cpu_usage.py), when probed.
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.completed / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of successful latencies, in ms (nan when none)."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    def mean_batch(self) -> float:
        total = sum(self.batch_sizes.values())
        return sum(size * n for size, n in self.batch_sizes.items()) / total if total else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "completed": self.completed,
            "throughput": round(self.throughput, 3),
            "p50_ms": round(self.percentile(50), 1),
            "p90_ms": round(self.percentile(90), 1),
            "p99_ms": round(self.percentile(99), 1),
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "mean_batch": round(self.mean_batch(), 2),
            "cpu_ms_per_request": self.cpu_ms_per_request,
        }


def check_local(url: str) -> None:
    """Refuse any target but this machine's loopback address."""
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError(f"load is only ever sent to 127.0.0.1, not {url}")


async def _client(
    session: aiohttp.ClientSession, url: str, body: bytes, result: LoadResult,
    window: tuple[float, float], budget: list[int],
) -> None:  # fmt: skip
    start_window, end_window = window
    while time.monotonic() < end_window and budget[0] > 0:
        budget[0] -= 1
        t0 = time.monotonic()
        try:
            async with session.put(url, data=body, headers={"Content-Type": "image/jpeg"}) as response:
                await response.read()
                status, batch = response.status, response.headers.get("x-batch-size")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status, batch = type(exc).__name__, None
        t1 = time.monotonic()
        if not start_window <= t1 <= end_window:
            continue
        if status == 200:
            result.completed += 1
            result.latencies_ms.append((t1 - t0) * 1000)
            if batch:
                result.batch_sizes[int(batch.split(",")[0])] += 1
        else:
            result.errors += 1
            result.error_kinds[str(status)] += 1


Probe = Callable[[], dict[int, tuple[str, float]]]  # e.g. cpu_usage.cpu_snapshot


async def _probe_window(probe: Probe, window: tuple[float, float]) -> tuple[dict, dict]:
    await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
    before = await asyncio.to_thread(probe)
    await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
    return before, await asyncio.to_thread(probe)


async def _run(
    url: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float, probe: Probe | None
) -> LoadResult:
    result = LoadResult(concurrency, duration_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic() + warmup_s
        window = (start, start + duration_s)
        budget = [MAX_REQUESTS]
        probing = asyncio.create_task(_probe_window(probe, window)) if probe else None
        tasks = [
            asyncio.create_task(_client(session, url, body, result, window, budget))
            for _ in range(concurrency)
        ]
        # Clients stop at the window's end; a request still in flight gets a short grace.
        done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + DRAIN_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
        if probing:
            result.cpu_ms_per_request = per_request_ms(*await probing, result.completed)
    return result


def closed_loop(
    url: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float, probe: Probe | None = None
) -> LoadResult:
    """Drive ``url`` (PUT, image body) with ``concurrency`` closed-loop clients; with ``probe``,
    also record the CPU each part of the stack spent per request inside the window."""
    check_local(url)
    return asyncio.run(_run(url, body, concurrency, warmup_s, duration_s, probe))


def sweep(
    url: str, body: bytes, levels: list[int], warmup_s: float, duration_s: float, label: str,
    probe: Probe | None = None,
) -> list[LoadResult]:  # fmt: skip
    """One closed-loop run per concurrency level, printed as it goes."""
    results = []
    for level in levels:
        r = closed_loop(url, body, level, warmup_s, duration_s, probe)
        print(
            f"  {label} c={level}: {r.throughput:.2f} req/s p50 {r.percentile(50):.0f} ms "
            f"p99 {r.percentile(99):.0f} ms errors {r.errors} mean batch {r.mean_batch():.2f}",
            flush=True,
        )
        results.append(r)
    return results
