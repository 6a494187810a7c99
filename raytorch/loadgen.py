"""HTTP load for measuring a server on this machine: closed loop (``concurrency`` clients, each
sending its next request as soon as the previous one is answered) or open loop (requests sent at
a fixed rate whether or not the earlier ones were answered).

Only requests that *finish* inside the measuring window (after the warm-up) count, so start-up
transients do not flatter or punish a layout. Everything is bounded: the window, a request count
cap, a per-request timeout, an in-flight cap (open loop) and a grace period after which
unfinished requests are cancelled. It talks only to 127.0.0.1. aiohttp rather than httpx: the
client shares the CPU with the server it measures, and aiohttp's C parser costs it less.

Used by ``raytorch tune`` and by ``benchmarks/`` (``make bench``).
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

MAX_REQUESTS = 200_000
REQUEST_TIMEOUT_S = 60.0
DRAIN_GRACE_S = 10.0


@dataclass
class LoadResult:
    """What one load point measured: successful answers inside the window and their latency."""

    concurrency: int  # closed loop: clients; open loop: the most requests in flight allowed
    duration_s: float
    rate: float | None = None  # open loop: requests sent per second
    completed: int = 0
    errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: Counter = field(default_factory=Counter)
    # What ``probe`` returned at the window's start and end, when one was given.
    probe_window: tuple[Any, Any] | None = None
    # CPU ms per completed request by part of the stack (benchmarks/cpu_usage.py), when probed.
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

    def record(self, status: int | str, latency_s: float, batch: str | None) -> None:
        """Count one answer that finished inside the window."""
        if status == 200:
            self.completed += 1
            self.latencies_ms.append(latency_s * 1000)
            if batch:
                self.batch_sizes[int(batch.split(",")[0])] += 1
        else:
            self.errors += 1
            self.error_kinds[str(status)] += 1

    def as_dict(self) -> dict[str, Any]:
        out = {
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
        if self.rate is not None:
            out["rate"] = self.rate
        return out


def check_local(url: str) -> None:
    """Refuse any target but this machine's loopback address."""
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError(f"load is only ever sent to 127.0.0.1, not {url}")


@dataclass
class Target:
    """Where the load goes and what it sends (PUT ``body`` as ``content_type``)."""

    url: str
    body: bytes
    content_type: str = "image/jpeg"


async def _send(session: aiohttp.ClientSession, target: Target) -> tuple[int | str, str | None]:
    try:
        headers = {"Content-Type": target.content_type}
        async with session.put(target.url, data=target.body, headers=headers) as response:
            await response.read()
            return response.status, response.headers.get("x-batch-size")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return type(exc).__name__, None


async def _client(
    session: aiohttp.ClientSession, target: Target, result: LoadResult, window: tuple[float, float],
    budget: list[int],
) -> None:  # fmt: skip
    start_window, end_window = window
    while time.monotonic() < end_window and budget[0] > 0:
        budget[0] -= 1
        t0 = time.monotonic()
        status, batch = await _send(session, target)
        t1 = time.monotonic()
        if start_window <= t1 <= end_window:
            result.record(status, t1 - t0, batch)


async def _timed(
    session: aiohttp.ClientSession, target: Target, result: LoadResult, window: tuple[float, float],
    in_flight: list[int],
) -> None:  # fmt: skip
    t0 = time.monotonic()
    try:
        status, batch = await _send(session, target)
    finally:
        in_flight[0] -= 1
    t1 = time.monotonic()
    if window[0] <= t1 <= window[1]:
        result.record(status, t1 - t0, batch)


async def _open_loop_sender(
    session: aiohttp.ClientSession, target: Target, result: LoadResult, window: tuple[float, float],
    rate: float, max_in_flight: int, tasks: list[asyncio.Task],
) -> None:  # fmt: skip
    """Send at ``rate`` per second, evenly spaced, until the window ends. An arrival that finds
    ``max_in_flight`` requests unanswered is dropped, and counted as an error if inside the
    window: the server did not keep up."""
    in_flight = [0]
    interval = 1.0 / rate
    next_at = time.monotonic()
    for _ in range(MAX_REQUESTS):
        now = time.monotonic()
        if now >= window[1]:
            return
        if next_at > now:
            await asyncio.sleep(next_at - now)
        next_at += interval
        if in_flight[0] >= max_in_flight:
            if window[0] <= time.monotonic() <= window[1]:
                result.record("dropped: too many in flight", 0.0, None)
            continue
        in_flight[0] += 1
        tasks.append(asyncio.create_task(_timed(session, target, result, window, in_flight)))


Probe = Callable[[], Any]  # e.g. benchmarks/cpu_usage.cpu_snapshot


async def _probe_window(probe: Probe, window: tuple[float, float]) -> tuple[Any, Any]:
    await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
    before = await asyncio.to_thread(probe)
    await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
    return before, await asyncio.to_thread(probe)


async def _run(
    target: Target, concurrency: int, warmup_s: float, duration_s: float, probe: Probe | None,
    rate: float | None = None,
) -> LoadResult:  # fmt: skip
    result = LoadResult(concurrency, duration_s, rate)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic() + warmup_s
        window = (start, start + duration_s)
        probing = asyncio.create_task(_probe_window(probe, window)) if probe else None
        tasks: list[asyncio.Task] = []
        if rate is None:
            budget = [MAX_REQUESTS]
            tasks = [
                asyncio.create_task(_client(session, target, result, window, budget))
                for _ in range(concurrency)
            ]
            bound = warmup_s + duration_s + DRAIN_GRACE_S
            done, pending = await asyncio.wait(tasks, timeout=bound)
        else:
            await _open_loop_sender(session, target, result, window, rate, concurrency, tasks)
            done, pending = await asyncio.wait(tasks, timeout=DRAIN_GRACE_S) if tasks else (set(), set())
        # Clients stop at the window's end; a request still in flight gets a short grace.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
        if probing:
            result.probe_window = await probing
    return result


def closed_loop(
    url: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float, probe: Probe | None = None,
    content_type: str = "image/jpeg",
) -> LoadResult:  # fmt: skip
    """Drive ``url`` (PUT ``body``) with ``concurrency`` closed-loop clients; with ``probe``,
    ``result.probe_window`` holds what it returned at the window's start and end."""
    check_local(url)
    return asyncio.run(_run(Target(url, body, content_type), concurrency, warmup_s, duration_s, probe))


def open_loop(
    url: str, body: bytes, rate: float, warmup_s: float, duration_s: float, max_in_flight: int,
    content_type: str = "image/jpeg",
) -> LoadResult:  # fmt: skip
    """Send PUT ``body`` to ``url`` at ``rate`` requests per second (evenly spaced), at most
    ``max_in_flight`` unanswered at once (arrivals beyond it are dropped and counted as errors)."""
    check_local(url)
    if rate <= 0:
        raise ValueError(f"the request rate must be above 0, not {rate}")
    target = Target(url, body, content_type)
    return asyncio.run(_run(target, max_in_flight, warmup_s, duration_s, None, rate))
