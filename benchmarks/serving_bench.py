"""Serving benchmark of issue 6: raw ceiling, our server and (optionally) TorchServe, in one run.

    make bench                                   # full run, ours only (about 10-15 min on 2 cores)
    make bench ARGS="--torchserve"               # plus TorchServe 0.12, default and best setting
    python benchmarks/serving_bench.py --quick   # smoke run, about 3-4 minutes
    python benchmarks/serving_bench.py --models resnet18 --variants default,threads2,replicas2 \
        --concurrency 1,16 --duration 10 --no-raw --no-extras   # compare levers

For each model (torchvision resnet18 / densenet161, seeded random weights shared by every
system) it measures the in-process ceiling, then each server variant (see
``server_runner.VARIANTS``; ``a+b`` combines levers) and each TorchServe setting under the same
closed-loop load; the order of systems alternates from model to model so slow drift on a shared
machine does not always favour the same one. Then: ``serve run`` start to first prediction,
register (management API) to first prediction, and idle memory of one model with 2 replicas.
Writes results.json, results.md and results.png into ``--out``. Load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's handlers/ and tests/, not the installed copy

import ray  # noqa: E402
import torch  # noqa: E402
import torchserve_runner as ts  # noqa: E402
from cpu_usage import cpu_snapshot  # noqa: E402
from idle_cpu import idle_percent, our_server  # noqa: E402
from load_generator import sweep  # noqa: E402
from raw_ceiling import raw_ceiling  # noqa: E402
from report import write_all  # noqa: E402
from server_runner import (  # noqa: E402
    idle_memory,
    make_config,
    predict_url,
    register_to_first_prediction,
    running,
    stack_pss,
    wait_first_prediction,
)

START_TIMEOUT_S = 300
IDLE_SETTLE_S = 20.0
IDLE_WINDOW_S = 30.0


def test_image() -> bytes:
    """A 500x375 JPEG (the size of TorchServe's kitten.jpg) made from scikit-image's cat photo."""
    import skimage
    from PIL import Image

    photo = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
    out = io.BytesIO()
    photo.resize((500, 375), Image.Resampling.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,densenet161")
    p.add_argument("--concurrency", default=None, help="default 1,4,16,64 (--quick: 1,4,16)")
    p.add_argument("--duration", type=float, default=None, help="seconds measured per point (15; quick 3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before each point, not counted (5)")
    p.add_argument("--variants", default="default", help="server variants, comma-separated; a+b combines")
    p.add_argument("--torchserve", action="store_true", help="also run TorchServe (needs Java)")
    p.add_argument("--ts-settings", default="default,best")
    p.add_argument("--raw-batches", default=None, help="batch sizes of the raw ceiling (1,2,4,8)")
    p.add_argument("--no-raw", action="store_true", help="skip the in-process ceiling")
    p.add_argument("--no-extras", action="store_true", help="skip register timing and idle memory")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<timestamp>")
    args = p.parse_args(argv)
    # --quick changes the defaults only; explicit flags still win.
    defaults = (3.0, 2.0, "1,4,16", "1,4") if args.quick else (15.0, 5.0, "1,4,16,64", "1,2,4,8")
    for name, value in zip(("duration", "warmup", "concurrency", "raw_batches"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.out = args.out or ROOT / "benchmarks" / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return args


def run_ours(
    model: str, variant: str, weights: Path, image: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    config, env = make_config(model, weights, variant)
    with running(config, env) as cluster:
        first = wait_first_prediction(cluster, model, image, START_TIMEOUT_S)
        print(f"  ours:{variant} {model}: serve run start to first prediction {first:.1f} s", flush=True)
        probe = functools.partial(cpu_snapshot, f"RAY_TMPDIR={cluster.workdir}")
        probe()  # names every process while the stack is idle (busy replicas retitle themselves)
        points = sweep(
            predict_url(cluster, model), image, args.levels, args.warmup, args.duration, variant, probe
        )
    return {"first_prediction_s": round(first, 2), "points": [r.as_dict() for r in points]}


def run_torchserve(
    model: str, setting: str, weights: Path, image: bytes, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    store = work / "store"
    mar = ts.build_mar(model, weights, store, work / f"mar-{model}")
    with ts.torchserve(store, mar, model, setting, work / f"ts-{model}-{setting}") as server:
        first = ts.wait_first_prediction(server, model, image, START_TIMEOUT_S)
        print(f"  torchserve:{setting} {model}: start to first prediction {first:.1f} s", flush=True)
        time.sleep(3)  # let every worker finish loading before measuring idle memory
        memory = stack_pss(server.marker)
        idle_cpu = idle_percent(server.marker, IDLE_WINDOW_S)
        url = f"{server.inference_url}/predictions/{model}"
        probe = functools.partial(cpu_snapshot, server.marker)
        points = sweep(url, image, args.levels, args.warmup, args.duration, f"torchserve:{setting}", probe)
    return {
        "first_prediction_s": round(first, 2),
        "idle_pss_mb": memory["pss_mb"],
        "processes": memory["processes"],
        "idle_pss_by_role": memory["by_role"],
        "idle_cpu": idle_cpu,
        "points": [r.as_dict() for r in points],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    models = args.models.split(",")
    if args.torchserve and not ts.java_version():
        raise SystemExit("--torchserve needs Java 11+ (java -version failed)")
    load_at_start = os.getloadavg()
    image = test_image()
    work = Path(tempfile.mkdtemp(prefix="rtb-", dir="/tmp"))
    results: dict[str, Any] = {"models": {}, "meta": {}}
    order: list[str] = []
    for index, model in enumerate(models):
        weights = ts.save_weights(model, work / f"{model}.pth")
        spec_json = make_config(model, weights, "default")[0]["applications"][-1]["args"]["model"]
        systems: list[str] = ["raw"] * (not args.no_raw) + [f"ours:{v}" for v in args.variants.split(",")]
        if args.torchserve:
            systems += [f"torchserve:{s}" for s in args.ts_settings.split(",")]
        if index % 2:
            systems.reverse()  # alternate which system runs first
        entry: dict[str, Any] = {"systems": {}}
        for system in systems:
            order.append(f"{system}/{model}")
            print(f"== {system} {model}", flush=True)
            kind, _, name = system.partition(":")
            if kind == "raw":
                from handlers.spec import ModelSpec

                spec = ModelSpec.model_validate(spec_json).model_dump_json()
                batches = [int(b) for b in args.raw_batches.split(",")]
                raw_duration = max(3.0, args.duration / 2)
                entry["raw"] = raw_ceiling(
                    model, spec, image, batches, args.warmup / 2, raw_duration
                ).as_dict()
            elif kind == "ours":
                entry["systems"][system] = run_ours(model, name, weights, image, args)
            else:
                entry["systems"][system] = run_torchserve(model, name, weights, image, work, args)
        # Keep the table's row order stable whatever the run order was.
        entry["systems"] = dict(sorted(entry["systems"].items()))
        results["models"][model] = entry
    if not args.no_extras:
        results.update(extras(work, image, results))
    results["meta"] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "image": "500x375 JPEG (chelsea.png resized)",
        "order": order,
        # Other work on the machine skews every number: judge the run by these.
        "loadavg_start": [round(x, 2) for x in load_at_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "argv": sys.argv[1:],
    }
    write_all(results, args.out)
    shutil.rmtree(work, ignore_errors=True)  # weights, archives and TorchServe logs of this run
    return 0


def extras(work: Path, image: bytes, results: dict[str, Any]) -> dict[str, Any]:
    """`make serve` start and idle CPU (the quickstart), register-to-first-prediction and idle
    memory (resnet18), and TorchServe's idle CPU when it ran."""
    print("== make serve (quickstart): start to first prediction, then idle CPU", flush=True)
    with our_server({}) as cluster:
        start = {"first_prediction_s": round(cluster.first_prediction_s, 2)}  # type: ignore[attr-defined]
        time.sleep(IDLE_SETTLE_S)
        idle = {"ours: quickstart": idle_percent(f"RAY_TMPDIR={cluster.workdir}", IDLE_WINDOW_S)}
    print(f"  start {start['first_prediction_s']} s; idle {idle['ours: quickstart']['total']} % of one core")
    weights = ts.save_weights("resnet18", work / "resnet18.pth")
    store = work / "store"
    mar = ts.build_mar("resnet18", weights, store, work / "mar-resnet18")
    print("== register resnet18 over the management API", flush=True)
    register = register_to_first_prediction(store, mar, "resnet18", image, work / "state", START_TIMEOUT_S)
    print(f"  register {register['register_s']} s, first prediction {register['first_prediction_s']} s")
    print("== idle memory: resnet18 x 2 replicas", flush=True)
    config, env = make_config("resnet18", weights, "replicas2")
    with running(config, env) as cluster:
        wait_first_prediction(cluster, "resnet18", image, START_TIMEOUT_S)
        ours = idle_memory(cluster, settle_s=10)
    print(f"  ours: {ours['pss_mb']} MB PSS in {ours['processes']} processes")
    memory: dict[str, Any] = {"ours": ours}
    ts_best = results["models"].get("resnet18", {}).get("systems", {}).get("torchserve:best")
    if ts_best:
        memory["torchserve"] = {
            "pss_mb": ts_best["idle_pss_mb"],
            "processes": ts_best["processes"],
            "by_role": ts_best.get("idle_pss_by_role", {}),
        }
        idle["TorchServe: 2 resnet18 workers"] = ts_best["idle_cpu"]
    return {"start": start, "register": register, "memory": memory, "idle": idle}


if __name__ == "__main__":
    sys.exit(main())
