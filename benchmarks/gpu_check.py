"""GPU host check (issue 28): on one GPU, the raw batched ceiling and our server, in minutes.

    python benchmarks/gpu_check.py                          # resnet18 + densenet161, fp16 (~5-7 min)
    python benchmarks/gpu_check.py --dtype bf16 --compile --models densenet161

Per model (torchvision, ``weights=None``, seeded; nothing downloads):

- **raw GPU**: forward passes on batches already on the GPU, channels_last, in fp32 and in
  ``--dtype`` (and compiled with ``torch.compile`` with ``--compile``): what the GPU can do.
- **CPU feed**: JPEG decode + resize + crop with our handler code, one process per core: what the
  CPUs can hand the GPU (our server decodes every request on the CPU).
- **ours**: ``configs/densenet.yaml``'s layout (ingress, management, 2 model replicas x 0.5
  GPU) with the model swapped, started as `make serve` starts it, fed by the closed-loop load
  generator at each ``--concurrency`` (a 500x375 JPEG per request).

Prints a markdown table with ours / raw ratios (and writes it to ``--out`` when given). On a
machine without a GPU it prints "no GPU: skipped" and exits 0. A step that would overrun
``--budget-s`` is skipped and named in the table's notes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's handlers/, raytorch/ and tests/

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
RAW_BATCH = 32


def gpu_name() -> str | None:
    """The first CUDA device's name, or None on a machine without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def forward_rate(
    model_name: str, batch: int, dtype: str, seconds: float, device: str = "cuda", compiled: bool = False
) -> float:
    """Images per second of ``model_name`` forwards at ``batch`` (channels_last, ``dtype``),
    inputs already on ``device``; after a warm-up, for about ``seconds``."""
    import torch
    import torchvision

    torch.manual_seed(0)
    kind = getattr(torch, DTYPES[dtype])
    model = torchvision.models.get_model(model_name, weights=None).eval()
    model = model.to(device=device, dtype=kind, memory_format=torch.channels_last)
    if compiled:
        model = torch.compile(model)
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=kind).to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(3 if not compiled else 5):  # compile and autotune happen here
            model(x)
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            count += 1
            if count % 4 == 0:
                sync()  # bounded queue of launched work; counts what finished
        sync()
        return count * batch / (time.perf_counter() - start)


def _feed_worker(image: bytes, seconds: float) -> int:
    import torch

    from handlers.handler_catalog import create_handler
    from handlers.spec import ModelSpec

    torch.set_num_threads(1)
    spec = ModelSpec.model_validate(
        {"name": "feed", "handler": "image_classifier", "source": {"architecture": "resnet18"}}
    )
    handler = create_handler(spec)  # preprocess needs no loaded model
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        handler.preprocess(image, "image/jpeg")
        count += 1
    return count


def feed_rate(image: bytes, seconds: float, processes: int) -> float:
    """Images per second ``processes`` processes decode and preprocess with our handler code."""
    with mp.get_context("spawn").Pool(processes) as pool:
        # Each worker counts its own `seconds` after it has started: spawning is not counted.
        return sum(pool.starmap(_feed_worker, [(image, seconds)] * processes)) / seconds


def server_config(model: str, on_gpu: bool = True) -> dict[str, Any]:
    """``configs/densenet.yaml`` serving ``model`` with random weights on half a GPU per replica
    (``on_gpu`` False: on the CPU, for ``--cpu-smoke``)."""
    from tests.e2e.serve_cluster import load_config

    config = load_config("densenet.yaml")
    for app in config["applications"]:
        if app["import_path"].endswith(":build_model"):
            app["name"] = model
            app["args"]["model"].update(name=model, source={"architecture": model, "weights": None})
            gpus = (
                {"num_gpus": 0.5, "gpu_policy": "required"}
                if on_gpu
                else {"num_gpus": 0, "gpu_policy": "auto"}
            )
            app["args"]["resources"].update(gpus)
    return config


def run_ours(
    model: str, image: bytes, levels: list[int], warmup_s: float, seconds: float, on_gpu: bool = True
) -> dict[int, dict]:
    """Req/s and p99 of our server at each concurrency level."""
    from load_generator import measure
    from server_runner import predict_url, running, wait_first_prediction

    out: dict[int, dict] = {}
    with running(server_config(model, on_gpu), {}) as cluster:
        first = wait_first_prediction(cluster, model, image, 300)
        print(f"  ours {model}: first prediction {first:.1f} s after start", flush=True)
        for level in levels:
            r = measure(predict_url(cluster, model), image, level, warmup_s, seconds)
            out[level] = {"rps": r.throughput, "p99_ms": r.percentile(99), "mean_batch": r.mean_batch()}
            print(
                f"  ours {model} c={level}: {r.throughput:.1f} req/s, p99 {r.percentile(99):.0f} ms",
                flush=True,
            )
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b and not math.isnan(a) and not math.isnan(b) else None


def table(results: dict[str, dict[str, Any]], dtype: str) -> str:
    """Markdown table: per model and concurrency, ours against the raw fp32 and ``dtype``
    ceilings and against what both the GPU and the CPUs allow (the lower of raw and feed)."""
    best = f"raw {dtype}"
    lines = [
        f"| model | c | ours req/s | p99 ms | raw fp32 | {best} | CPU feed | ours / raw fp32 "
        f"| ours / {best} | ours / min({best}, feed) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in results.items():
        raw32, raw_low = r.get("raw_fp32"), r.get(f"raw_{dtype}")
        if r.get("raw_compiled") and (raw_low is None or r["raw_compiled"] > raw_low):
            raw_low = r["raw_compiled"]  # the best half-precision ceiling, compiled or not
        feed = r.get("feed")
        known = [x for x in (raw_low, feed) if x is not None and not math.isnan(x)]
        limit = min(known) if known else None  # what the GPU and the CPUs together allow
        for level, point in sorted((r.get("ours") or {None: {}}).items(), key=lambda kv: kv[0] or 0):
            rps = point.get("rps")
            cells = [model, str(level or "-"), _fmt(rps), _fmt(point.get("p99_ms"), 0)]
            cells += [_fmt(raw32), _fmt(raw_low), _fmt(feed)]
            cells += [_fmt(_ratio(rps, base), 2) for base in (raw32, raw_low, limit)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,densenet161")
    p.add_argument(
        "--dtype", choices=["fp16", "bf16"], default="fp16", help="half precision of the raw ceiling"
    )
    p.add_argument("--compile", action="store_true", help="also the raw ceiling under torch.compile")
    p.add_argument("--concurrency", default="16,64", help="closed-loop clients for ours")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds measured per point")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip steps that would run past this")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="without a GPU, run every step on the CPU: checks the script, measures nothing",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = gpu_name()
    if name is None and not args.cpu_smoke:
        print("no GPU: skipped (this check needs one CUDA device)")
        return 0
    device = "cuda" if name else "cpu"
    from raytorch.tune import sample_photo

    started = time.monotonic()
    image = sample_photo()
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    def time_left(step: str, needs_s: float) -> bool:
        if time.monotonic() - started + needs_s <= args.budget_s:
            return True
        notes.append(f"skipped {step}: it would pass the {args.budget_s:g} s budget")
        return False

    print(
        f"GPU: {name or 'none (--cpu-smoke: nothing here is a measurement)'}; {os.cpu_count()} CPUs",
        flush=True,
    )
    feed = None
    if time_left("the CPU feed", args.seconds + 15):
        feed = feed_rate(image, args.seconds, os.cpu_count() or 1)
        print(f"  CPU feed: {feed:.0f} img/s", flush=True)
    for model in args.models.split(","):
        r: dict[str, Any] = results.setdefault(model, {"feed": feed})
        steps = [("fp32", "raw_fp32", False), (args.dtype, f"raw_{args.dtype}", False)]
        if args.compile:
            steps.append((args.dtype, "raw_compiled", True))
        for dtype, key, compiled in steps:
            if time_left(f"{model} {key}", args.seconds + (90 if compiled else 10)):
                r[key] = forward_rate(model, RAW_BATCH, dtype, args.seconds, device, compiled)
                print(f"  {model} {key} batch {RAW_BATCH}: {r[key]:.0f} img/s", flush=True)
        if time_left(f"ours {model}", 60 + len(levels) * (args.seconds + 3)):
            r["ours"] = run_ours(model, image, levels, 3.0, args.seconds, on_gpu=name is not None)
    text = table(results, args.dtype)
    seconds = time.monotonic() - started
    text += f"\n\nGPU {name or 'none (CPU smoke run)'}, {os.cpu_count()} CPUs, {seconds:.0f} s in all."
    text += "".join(f"\n- {note}" for note in notes)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
