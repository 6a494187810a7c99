"""The quickstart's numbers: start to first prediction, and 200 requests at concurrency 8
against the in-process ceiling of the same model (EfficientNet-Lite0, real weights).

    python benchmarks/quickstart_bench.py [--requests 200] [--concurrency 8]

Prints a table with the ratios. Every request goes to 127.0.0.1 and the run is bounded.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.raw_ceiling import raw_ceiling  # noqa: E402
from benchmarks.server_runner import bench_env  # noqa: E402
from tests.e2e.serve_cluster import load_config, serve_run  # noqa: E402
from tests.fixtures.specs import photo_path, quickstart_model_args  # noqa: E402

MODEL = "efficientnet_lite0"


def cat_jpeg() -> bytes:
    """The cat photo as a JPEG, the format clients usually send."""
    buffer = io.BytesIO()
    Image.open(photo_path("chelsea.png")).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def fixed_count(url: str, body: bytes, requests: int, concurrency: int) -> dict:
    """Send exactly ``requests`` requests with ``concurrency`` clients; time the whole run."""

    def one(_: int) -> tuple[int, float, str]:
        began = time.perf_counter()
        with httpx.Client(timeout=60) as client:
            response = client.put(url, content=body)
        return response.status_code, time.perf_counter() - began, response.headers.get("x-batch-size", "")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    latencies = sorted(seconds * 1000 for code, seconds, _ in outcomes if code == 200)
    batches = [int(b) for code, _, b in outcomes if code == 200 and b.isdigit()]
    return {
        "ok": len(latencies),
        "errors": requests - len(latencies),
        "throughput": len(latencies) / wall,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[max(0, round(0.99 * len(latencies)) - 1)],
        "mean_batch": statistics.fmean(batches) if batches else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--raw-seconds", type=float, default=8.0)
    args = parser.parse_args()
    image = cat_jpeg()

    spec = {**quickstart_model_args()["model"], "warmup": True}
    raw = raw_ceiling(MODEL, json.dumps(spec), image, [8], warmup_s=3, duration_s=args.raw_seconds)

    with serve_run(load_config("quickstart.yaml"), extra_env=bench_env()) as cluster:
        url = f"{cluster.base_url}/predictions/{MODEL}"

        def answered() -> bool:
            return httpx.put(url, content=image, timeout=30).status_code == 200

        start_s = cluster.wait_for(answered, 300, "the first prediction")
        fixed_count(url, image, 2 * args.concurrency, args.concurrency)  # warm-up
        served = fixed_count(url, image, args.requests, args.concurrency)

    best, best1 = raw.best, raw.best_batch1
    rows = [
        ("serve run start -> first prediction", f"{start_s:.1f} s"),
        (
            f"in-process ceiling (best: {best.processes} proc x {best.threads} thr, batch {best.batch_size})",
            f"{best.images_per_s:.1f} img/s",
        ),
        (
            f"in-process ceiling at batch 1 ({best1.processes} x {best1.threads})",
            f"{best1.images_per_s:.1f} img/s",
        ),
        ("served throughput", f"{served['throughput']:.1f} req/s ({served['errors']} errors)"),
        ("served p50 / p99", f"{served['p50_ms']:.0f} / {served['p99_ms']:.0f} ms"),
        ("mean batch formed", f"{served['mean_batch']:.2f}"),
        ("served / ceiling", f"{served['throughput'] / best.images_per_s:.2f}"),
        ("served / ceiling at batch 1", f"{served['throughput'] / best1.images_per_s:.2f}"),
    ]
    print(f"\n## Quickstart ({MODEL}), {args.requests} requests at concurrency {args.concurrency}\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0 if served["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
