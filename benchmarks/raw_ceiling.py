"""The in-process ceiling: how many images per second this machine can decode, preprocess and
classify with no serving in the way.

Each measurement runs in fresh spawned processes (torch's thread pool is fixed once used), with
the same handler code and model spec the server runs, so ``ours / raw`` isolates what serving
costs. Two layouts are measured: one process using every core's thread, and one process per
core with one thread each; the best of the two is the ceiling.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

# Every measurement ends after this many batches even if the clock says otherwise.
MAX_BATCHES = 100_000


@dataclass
class RawPoint:
    """Throughput of one layout at one batch size."""

    processes: int
    threads: int
    batch_size: int
    images_per_s: float
    latency_p50_ms: float  # of one batch, decode included; the first process's view

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _worker(
    spec_json: str, image: bytes, threads: int, batch: int, warmup_s: float, duration_s: float,
    ready: Any, go: Any, results: Any,
) -> None:  # fmt: skip
    """Body of one measuring process: load, warm up, wait for the others, then count."""
    import torch

    from handlers.handler_catalog import create_handler
    from handlers.spec import ModelSpec

    torch.set_num_threads(threads)
    spec = ModelSpec.model_validate_json(spec_json)
    # The served config pins torch_threads (1 per replica); here the layout decides, and
    # load() would otherwise set the config's count over ours.
    handler = create_handler(spec.model_copy(update={"torch_threads": threads}))
    handler.load()

    def one_batch() -> None:
        items = [handler.preprocess(image, "image/jpeg") for _ in range(batch)]
        handler.predict_batch(items)

    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        one_batch()
    ready.put(os.getpid())
    go.wait(timeout=600)
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s and len(latencies) < MAX_BATCHES:
        t0 = time.perf_counter()
        one_batch()
        latencies.append(time.perf_counter() - t0)
    results.put((len(latencies) * batch, time.perf_counter() - start, latencies))


def measure(
    spec_json: str, image: bytes, processes: int, threads: int, batch: int, warmup_s: float, duration_s: float
) -> RawPoint:
    """Images/s of ``processes`` processes with ``threads`` torch threads each, batch ``batch``."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=_worker, args=(spec_json, image, threads, batch, warmup_s, duration_s, ready, go, results)
        )
        for _ in range(processes)
    ]
    # Spawned children copy our environment at start; OpenMP reads it before torch does.
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        for p in procs:
            p.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    try:
        for _ in procs:
            ready.get(timeout=300)
        go.set()
        outcomes = [results.get(timeout=duration_s + 300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    images_per_s = sum(n / seconds for n, seconds, _ in outcomes)
    p50 = statistics.median(outcomes[0][2]) * 1000 if outcomes[0][2] else float("nan")
    return RawPoint(processes, threads, batch, images_per_s, p50)


@dataclass
class RawCeiling:
    """Every layout measured for a model and the best of them."""

    model: str
    points: list[RawPoint]

    @property
    def best(self) -> RawPoint:
        return max(self.points, key=lambda p: p.images_per_s)

    @property
    def best_batch1(self) -> RawPoint:
        return max((p for p in self.points if p.batch_size == 1), key=lambda p: p.images_per_s)

    @property
    def single_request(self) -> RawPoint:
        """One process, all threads, batch 1: the latency a lone request can hope for."""
        cores = os.cpu_count() or 1
        return next(p for p in self.points if p.processes == 1 and p.threads == cores and p.batch_size == 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "points": [p.as_dict() for p in self.points],
            "best": self.best.as_dict(),
            "best_batch1": self.best_batch1.as_dict(),
            "single_request": self.single_request.as_dict(),
        }


def raw_ceiling(
    model: str, spec_json: str, image: bytes, batches: list[int], warmup_s: float, duration_s: float
) -> RawCeiling:
    """Measure (1 process x all threads) and (1 process per core x 1 thread) at each batch size."""
    cores = os.cpu_count() or 1
    layouts = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
    points = []
    for batch in sorted(set([1, *batches])):
        for processes, threads in layouts:
            point = measure(spec_json, image, processes, threads, batch, warmup_s, duration_s)
            print(
                f"  raw {model}: {processes} proc x {threads} thr, batch {batch}: "
                f"{point.images_per_s:.2f} img/s (p50 batch {point.latency_p50_ms:.0f} ms)",
                flush=True,
            )
            points.append(point)
    return RawCeiling(model, points)
