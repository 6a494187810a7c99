"""The benchmark's load: :mod:`raytorch.loadgen`'s closed loop, one concurrency level after
another, with the CPU each part of the stack spent per request (``cpu_usage``) when probed.

The generator itself lives in the package, where ``raytorch tune`` uses it too.
"""

from __future__ import annotations

from cpu_usage import per_request_ms

from raytorch.loadgen import LoadResult, Probe, check_local, closed_loop

__all__ = ["LoadResult", "Probe", "check_local", "closed_loop", "measure", "sweep"]


def measure(
    url: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float, probe: Probe | None = None
) -> LoadResult:
    """One closed-loop point; with ``probe`` (``cpu_usage.cpu_snapshot``), also the CPU ms per
    request of each part of the stack inside the window."""
    result = closed_loop(url, body, concurrency, warmup_s, duration_s, probe)
    if result.probe_window:
        result.cpu_ms_per_request = per_request_ms(*result.probe_window, result.completed)
    return result


def sweep(
    url: str, body: bytes, levels: list[int], warmup_s: float, duration_s: float, label: str,
    probe: Probe | None = None,
) -> list[LoadResult]:  # fmt: skip
    """One closed-loop run per concurrency level, printed as it goes."""
    results = []
    for level in levels:
        r = measure(url, body, level, warmup_s, duration_s, probe)
        print(
            f"  {label} c={level}: {r.throughput:.2f} req/s p50 {r.percentile(50):.0f} ms "
            f"p99 {r.percentile(99):.0f} ms errors {r.errors} mean batch {r.mean_batch():.2f}",
            flush=True,
        )
        results.append(r)
    return results
