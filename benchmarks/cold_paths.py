"""Issue 28's cold paths, with where the seconds go by process.

    python benchmarks/cold_paths.py [--runs 3] [--only start,register,scale]

- **start**: `make serve` (the launcher on configs/quickstart.yaml) to the first prediction;
- **register**: ``POST /models?url=resnet18.mar`` on a running server to the first prediction;
- **register-pooled**: the same on configs/model_pool.yaml (a pool replica already up loads it);
- **scale**: ``PUT /models/resnet18?min_worker=2`` under closed-loop load (concurrency 4) to
  the new replica initialised.

Each is run ``--runs`` times on a fresh server and printed as min / median / max against the
issue's targets, then the phases of the median run, read from the launcher's output and Ray's
own logs (the controller's "Adding 1 replica", each replica's "Started/Finished initializing"):
which process the seconds were spent in.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torchserve_runner as ts  # noqa: E402
from idle_cpu import our_server  # noqa: E402
from server_runner import bench_env, running  # noqa: E402

from tests.e2e.serve_cluster import ServeCluster, load_config  # noqa: E402
from tests.fixtures.specs import photo_path  # noqa: E402

TARGETS_S = {"start": 10.0, "register": 3.0, "register-pooled": 3.0, "scale": 3.0}
TOKEN = "bench-token-0123456789"
# A registration is timed on a server that has been up a while, not one still starting.
SETTLE_S = 10.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STAMP = re.compile(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}[,.]\d{3})")
# Log lines that mark a phase: (file glob under the session's logs, pattern, phase name).
MARKS = (
    ("serve/controller_*.log", r"Adding 1 replica to Deployment\(name='([^']+)'", "replica added: {}"),
    (
        "serve/replica_*.log",
        r"Started initializing replica",
        "replica constructor starts (process up, code imported): {file}",
    ),
    ("serve/replica_*.log", r"Finished initializing replica", "replica constructor done (ready): {file}"),
)


def stamp_of(line: str) -> float | None:
    """Wall-clock seconds of a Ray log line's timestamp."""
    found = STAMP.search(line)
    if not found:
        return None
    return datetime.strptime(
        found.group(1).replace("T", " ").replace(".", ","), "%Y-%m-%d %H:%M:%S,%f"
    ).timestamp()


def phases(cluster: ServeCluster, since: float) -> list[tuple[float, str]]:
    """(seconds after ``since``, what happened) from the launcher's output and Ray's logs."""
    events: list[tuple[float, str]] = []
    for line in cluster.log().splitlines():
        for needle, what in (
            ("Started a local Ray instance", "Ray started (ray.init)"),
            ("Started Serve", "Serve started"),
        ):
            if needle in line and (at := stamp_of(line)):
                events.append((at, what))
    for logs in cluster.workdir.glob("**/session_latest/logs"):
        for pattern, regex, what in MARKS:
            for path in logs.glob(pattern):
                name = path.stem.removeprefix("replica_").rsplit("_", 1)[0]
                for line in path.read_text(errors="replace").splitlines():
                    found = re.search(regex, line)
                    if found and (at := stamp_of(line)):
                        events.append((at, what.format(*found.groups(), file=name)))
    return sorted((at - since, what) for at, what in events if at >= since - 1)


def first_answer(url: str, image: bytes, timeout: float) -> float:
    """Wall-clock time of the first 200 answer of ``url``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.put(url, content=image, timeout=30).status_code == 200:
                return time.time()
        time.sleep(0.05)
    raise RuntimeError(f"no answer from {url} within {timeout}s")


def measure_start(work: Path, image: bytes) -> dict[str, Any]:
    wall = time.time()
    with our_server({}) as cluster:
        return {"seconds": cluster.first_prediction_s, "phases": phases(cluster, wall)}


@contextlib.contextmanager
def management_server(work: Path, pooled: bool = False) -> Iterator[ServeCluster]:
    """Ingress and management only (as the register benchmark of serving_bench), or
    configs/model_pool.yaml, whose registrations go to a pool replica that is already up."""
    if pooled:
        config = load_config("model_pool.yaml")
    else:
        config = load_config("densenet.yaml")
        config["applications"] = [a for a in config["applications"] if a["name"] in ("ingress", "management")]
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    env = {
        "RAYTORCH_TOKEN": TOKEN,
        "RAYTORCH_MODEL_STORE": str(work / "store"),
        "RAYTORCH_STATE_DIR": str(state),
    }
    with running(config, bench_env(env)) as cluster:
        cluster.wait_for(
            lambda: httpx.get(f"{cluster.base_url}/models", headers=AUTH).status_code == 200,
            300,
            "management",
        )
        yield cluster


def register(cluster: ServeCluster, mar: str) -> None:
    reply = httpx.post(
        f"{cluster.base_url}/models?url={mar}&model_name=resnet18&num_cpus=0.5", headers=AUTH, timeout=300
    )
    if reply.status_code != 200:
        raise RuntimeError(f"register answered {reply.status_code}: {reply.text}")


def measure_register(work: Path, image: bytes, mar: str, pooled: bool = False) -> dict[str, Any]:
    with management_server(work, pooled) as cluster:
        if pooled:  # the pool's replica is up before the clock starts, as on a running server
            cluster.wait_for(lambda: httpx.get(f"{cluster.base_url}/ping").status_code == 200, 300, "/ping")
        time.sleep(SETTLE_S)
        wall = time.time()
        register(cluster, mar)
        answered = time.time() - wall
        done = first_answer(f"{cluster.base_url}/predictions/resnet18", image, 300)
        events = [
            *phases(cluster, wall),
            (answered, "POST /models answered 200"),
            (done - wall, "first prediction"),
        ]
        return {"seconds": done - wall, "phases": sorted(events)}


def measure_scale(work: Path, image: bytes, mar: str) -> dict[str, Any]:
    with management_server(work) as cluster:
        register(cluster, mar)
        url = f"{cluster.base_url}/predictions/resnet18"
        first_answer(url, image, 300)
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        client.put(url, content=image)

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(3)
        wall = time.time()
        reply = httpx.put(
            f"{cluster.base_url}/models/resnet18?min_worker=2&synchronous=false", headers=AUTH, timeout=300
        )
        if reply.status_code >= 300:
            raise RuntimeError(f"scale answered {reply.status_code}: {reply.text}")
        deadline = time.monotonic() + 300
        ready = None
        while ready is None and time.monotonic() < deadline:
            inits = [
                at
                for at, what in phases(cluster, wall)
                if what.startswith("replica constructor done") and "resnet18" in what
            ]
            ready = inits[0] if inits else None
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.join(60)
        if ready is None:
            raise RuntimeError("the new replica never initialised")
        return {"seconds": ready, "phases": phases(cluster, wall)}


def report(name: str, runs: list[dict[str, Any]]) -> None:
    seconds = sorted(run["seconds"] for run in runs)
    median = statistics.median(seconds)
    target = TARGETS_S[name]
    print(f"\n{name}: min {seconds[0]:.2f} s, median {median:.2f} s, max {seconds[-1]:.2f} s "
          f"(target <= {target:g} s: {'met' if seconds[-1] <= target else 'NOT met'})")  # fmt: skip
    middle = min(runs, key=lambda run: abs(run["seconds"] - median))
    print("  phases of the median run (seconds from the start of the measurement):")
    for at, what in middle["phases"]:
        print(f"    {at:7.2f}  {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="start,register,register-pooled,scale")
    args = parser.parse_args()
    image = photo_path("chelsea.png").read_bytes()
    work = Path(tempfile.mkdtemp(prefix="cold-"))
    mar = ""
    if {"register", "register-pooled", "scale"} & set(args.only.split(",")):
        weights = ts.save_weights("resnet18", work / "resnet18.pth")
        mar = ts.build_mar("resnet18", weights, work / "store", work / "mar")
    for name in args.only.split(","):
        runs = []
        for run in range(args.runs):
            if name == "start":
                runs.append(measure_start(work, image))
            elif name.startswith("register"):
                runs.append(measure_register(work, image, mar, pooled=name == "register-pooled"))
            else:
                runs.append(measure_scale(work, image, mar))
            print(f"{name} run {run + 1}: {runs[-1]['seconds']:.2f} s", flush=True)
        report(name, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
