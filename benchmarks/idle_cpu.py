"""What a server costs while nobody calls it: CPU of every process of its stack, from /proc.

    python benchmarks/idle_cpu.py                       # quickstart, then with 10 idle models
    python benchmarks/idle_cpu.py --torchserve          # and TorchServe (2 resnet18 workers)
    python benchmarks/idle_cpu.py --pool                # and the 10 idle models in a pool
    python benchmarks/idle_cpu.py --seconds 60 --env RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.1

Each server is started the way users start it (`make serve`'s launcher for ours), left to
settle, then measured over ``--seconds``: CPU time (user + system) summed by part of the
stack, as a percentage of one core. Prints a table and the ratio ours / TorchServe. Issue 20's
bound is 5 % of one core, with the quickstart alone and with 10 registered idle models.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torchserve_runner as ts  # noqa: E402
from cpu_usage import cpu_snapshot  # noqa: E402

from tests.e2e.serve_cluster import (  # noqa: E402
    ServeCluster,
    free_port,
    load_config,
    serve_run,
    trust_test_fixtures,
)
from tests.fixtures.specs import photo_path  # noqa: E402

BOUND_PERCENT = 5.0
TOKEN = "idle-bench-token"


def idle_percent(marker: str, seconds: float) -> dict[str, float]:
    """% of one core per part of the stack over ``seconds`` (``total`` included)."""
    before = cpu_snapshot(marker)
    started = time.monotonic()
    time.sleep(seconds)
    after = cpu_snapshot(marker)
    wall = time.monotonic() - started
    spent: Counter = Counter()
    for pid, (role, cpu) in after.items():
        if role != "load generator" and pid in before:
            spent[role] += cpu - before[pid][1]
    percent = {role: round(cpu / wall * 100, 2) for role, cpu in spent.most_common() if cpu > 0}
    percent["total"] = round(sum(percent.values()), 2)
    return percent


@contextlib.contextmanager
def our_server(env: dict[str, str], config_name: str = "quickstart.yaml") -> Iterator[ServeCluster]:
    """A shipped config (the quickstart by default), started by the launcher as `make serve`
    does, with its own state; ready once it answers (a prediction, or /ping without models)."""
    launcher = ["--metrics-port", str(free_port()), "--dashboard-port", str(free_port())]
    # The idle models are the tests' tiny CNN: the operator trusts tests.fixtures, as the e2e suite does.
    config = trust_test_fixtures(load_config(config_name))
    model = next(
        (a["name"] for a in config["applications"] if a["import_path"].endswith(":build_model")), None
    )
    with serve_run(config, extra_env=env, launcher_args=launcher) as cluster:
        image = photo_path("chelsea.png").read_bytes()

        def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                if model is None:
                    return httpx.get(f"{cluster.base_url}/ping").status_code == 200
                return httpx.put(f"{cluster.base_url}/predictions/{model}", content=image).status_code == 200
            return False

        cluster.first_prediction_s = cluster.wait_for(answers, timeout=300, what="the first answer")  # type: ignore[attr-defined]
        yield cluster


def register_idle_models(cluster: ServeCluster, store: Path, count: int, pool: str | None = None) -> None:
    """``count`` tiny models registered over the management API: one replica each, or into
    ``pool`` (loaded once by a pool replica before the 200, then idle)."""
    import torch

    from handlers.archive import write_archive
    from tests.fixtures.models import tiny_classifier

    torch.save(tiny_classifier().state_dict(), store / "tiny.pth")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(count):
        spec = {
            "name": f"idle{i}",
            "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "tiny.pth"},
            "preprocess": {"resize": 64, "crop": 56},
            "warmup": False,
        }
        write_archive(spec, [store / "tiny.pth"], store / f"idle{i}.zip")
        where = f"pool={pool}" if pool else "num_cpus=0&dedicated=true"
        reply = httpx.post(f"{cluster.base_url}/models?url=idle{i}.zip&{where}", headers=auth, timeout=300)
        if reply.status_code != 200:
            raise RuntimeError(f"registering idle{i}: {reply.status_code} {reply.text}")


def measure_ours(args: argparse.Namespace, env: dict[str, str], work: Path) -> dict[str, dict[str, float]]:
    store = work / "store"
    store.mkdir(parents=True, exist_ok=True)
    env = {**env, "RAYTORCH_TOKEN": TOKEN, "RAYTORCH_MODEL_STORE": str(store),
           "RAYTORCH_STATE_DIR": str(work / "state"), "RAYTORCH_LOG_DIR": str(work / "logs")}  # fmt: skip
    results = {}
    with our_server(env) as cluster:
        marker = f"RAY_TMPDIR={cluster.workdir}"
        time.sleep(args.settle)
        results["ours: quickstart"] = idle_percent(marker, args.seconds)
        print_row("ours: quickstart", results["ours: quickstart"])
        if args.models:
            register_idle_models(cluster, store, args.models)
            time.sleep(args.settle)
            name = f"ours: + {args.models} idle models"
            results[name] = idle_percent(marker, args.seconds)
            print_row(name, results[name])
    return results


def measure_pool(args: argparse.Namespace, env: dict[str, str], work: Path) -> dict[str, dict[str, float]]:
    """configs/model_pool.yaml alone, then with ``--models`` idle models registered into its pool."""
    store = work / "pool-store"
    store.mkdir(parents=True, exist_ok=True)
    env = {**env, "RAYTORCH_TOKEN": TOKEN, "RAYTORCH_MODEL_STORE": str(store),
           "RAYTORCH_STATE_DIR": str(work / "pool-state"),
           "RAYTORCH_LOG_DIR": str(work / "pool-logs")}  # fmt: skip
    results = {}
    with our_server(env, "model_pool.yaml") as cluster:
        marker = f"RAY_TMPDIR={cluster.workdir}"
        time.sleep(args.settle)
        results["ours: model_pool.yaml"] = idle_percent(marker, args.seconds)
        print_row("ours: model_pool.yaml", results["ours: model_pool.yaml"])
        register_idle_models(cluster, store, args.models, pool="small")
        time.sleep(args.settle)
        name = f"ours: model_pool.yaml + {args.models} idle pooled models"
        results[name] = idle_percent(marker, args.seconds)
        print_row(name, results[name])
    return results


def measure_torchserve(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    weights = ts.save_weights("resnet18", work / "resnet18.pth")
    store = work / "ts-store"
    mar = ts.build_mar("resnet18", weights, store, work / "mar")
    image = photo_path("chelsea.png").read_bytes()
    with ts.torchserve(store, mar, "resnet18", "best", work / "ts") as server:
        ts.wait_first_prediction(server, "resnet18", image, 300)
        time.sleep(args.settle)
        result = idle_percent(server.marker, args.seconds)
    print_row("TorchServe: 2 resnet18 workers", result)
    return {"TorchServe: 2 resnet18 workers": result}


def print_row(name: str, percent: dict[str, float]) -> None:
    parts = ", ".join(f"{role} {value:.2f}" for role, value in percent.items() if role != "total")
    print(f"{name}: {percent['total']:.2f} % of one core ({parts})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    parser.add_argument("--settle", type=float, default=20.0, help="idle time before measuring")
    parser.add_argument("--models", type=int, default=10, help="idle models to register (0: skip)")
    parser.add_argument(
        "--pool", action="store_true", help="also configs/model_pool.yaml, idle models pooled"
    )
    parser.add_argument("--torchserve", action="store_true", help="also measure TorchServe")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our server's processes")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="rt-idle-", dir="/tmp"))
    results = measure_ours(args, env, work)
    if args.pool and args.models:
        results.update(measure_pool(args, env, work))
    if args.torchserve:
        results.update(measure_torchserve(args, work))
    print(f"\nIdle CPU, % of one core ({args.seconds:g} s after {args.settle:g} s of settling; "
          f"load average now {os.getloadavg()[0]:.2f})")  # fmt: skip
    print("| server | idle CPU | bound 5 % | / TorchServe |")
    print("|---|---:|---|---:|")
    peer = results.get("TorchServe: 2 resnet18 workers", {}).get("total")
    for name, percent in results.items():
        ratio = f"{percent['total'] / peer:.1f}" if peer and not name.startswith("TorchServe") else "-"
        met = "met" if percent["total"] <= BOUND_PERCENT else "not met"
        print(f"| {name} | {percent['total']:.2f} % | {met if name.startswith('ours') else '-'} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
