"""Multi-node check on one machine: replicas spread over nodes and survive losing a node.

Starts a Ray head and two worker nodes with ``ray start --block`` (each in its own process
group, on its own ports, under one private RAY_TMPDIR), deploys a tiny model with three
replicas through ``serve deploy``, checks over Serve's REST API and Ray's state API that the
replicas run on more than one node, then SIGKILLs one worker node's process group while a
bounded request loop runs, and measures how long Serve takes to have three RUNNING replicas
again, how many requests failed and the slowest one. Prints a small report table and exits
non-zero when replicas did not spread, were not rescheduled, or a request hung.

    python benchmarks/multinode_check.py          # about 1-2 minutes on 2 cores

Only processes this script started are stopped (by process group, then by PID for anything
left that names this run's private temp dir). Never ``ray stop``.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from local_nodes import (
    BIN,
    ROOT,
    RunState,
    cluster_memory_mb,
    free_ports,
    kill_group,
    start_node,
    stop_all,
    wait_until,
)

MODEL = "tiny"
REPLICAS = 3
CLIENT_TIMEOUT_S = 10.0  # the ingress answers 504 after 8 s, so a client timeout means a hang


def check_config(http_port: int) -> dict:
    """The Serve config deployed: our ingress and a tiny model with three 0.5-CPU replicas."""
    model = {
        "name": MODEL,
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "factory_kwargs": {"num_classes": 10}},
        "preprocess": {"resize": 64, "crop": 56},
        "top_k": 3,
        "warmup": False,
    }
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [
            {
                "name": "ingress",
                "route_prefix": "/",
                "import_path": "deployments.app:build_ingress",
                "args": {"request_timeout_s": CLIENT_TIMEOUT_S - 2},
            },
            {
                "name": MODEL,
                "route_prefix": None,
                "import_path": "deployments.app:build_model",
                "args": {
                    "model": model,
                    "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.005},
                    "resources": {"num_replicas": REPLICAS, "num_cpus": 0.5},
                },
            },
        ],
    }


def replicas(dashboard: str) -> dict[str, list[tuple[str, str]]]:
    """Replica (state, node_id) pairs per application, from Serve's REST API."""
    apps = httpx.get(f"{dashboard}/api/serve/applications/", timeout=5).json()["applications"]
    return {
        app: [(r["state"], r["node_id"]) for d in detail["deployments"].values() for r in d["replicas"]]
        for app, detail in apps.items()
    }


def running_nodes(dashboard: str, app: str) -> list[str] | None:
    """Node ids of the app's replicas when exactly REPLICAS of them are RUNNING, else None."""
    states = replicas(dashboard).get(app, [])
    running = [node for state, node in states if state == "RUNNING"]
    return running if len(running) == REPLICAS and len(states) == REPLICAS else None


@dataclass
class Result:
    """One request of the load loop."""

    sent_at: float
    seconds: float
    outcome: str  # "200", another status code, or the exception's class name


def load_loop(url: str, body: bytes, stop: threading.Event, out: list[Result], pause: float) -> None:
    """Send predictions one after another until ``stop``; every request has a client deadline."""
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        while not stop.is_set():
            start = time.monotonic()
            try:
                outcome = str(client.put(url, content=body).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            out.append(Result(start, time.monotonic() - start, outcome))
            time.sleep(pause)


def summarize(label: str, results: list[Result]) -> str:
    """One report row: requests, errors by kind, median and max latency."""
    errors = Counter(r.outcome for r in results if r.outcome != "200")
    latencies = [r.seconds for r in results] or [0.0]
    kinds = ", ".join(f"{k} x{n}" for k, n in errors.items()) or "-"
    return (
        f"| {label:<24} | {len(results):>8} | {sum(errors.values()):>6} | "
        f"{statistics.median(latencies) * 1000:>8.0f} | {max(latencies) * 1000:>8.0f} | {kinds}"
    )


def start_cluster(run: RunState, gcs: int, dash_port: int, client_port: int) -> Callable[[], list[str]]:
    """Head (1 CPU) and two workers (1 CPU each); returns a function listing alive node ids."""
    from ray.util.state import list_nodes

    dashboard = f"http://127.0.0.1:{dash_port}"

    def alive_nodes() -> list[str]:
        return [n.node_id for n in list_nodes(address=dashboard) if n.state == "ALIVE"]

    head_args = ["--head", f"--port={gcs}", "--include-dashboard=true", f"--dashboard-port={dash_port}",
                 f"--ray-client-server-port={client_port}"]  # fmt: skip
    for name, args in [("head", head_args), ("worker-1", [f"--address=127.0.0.1:{gcs}"]),
                       ("worker-2", [f"--address=127.0.0.1:{gcs}"])]:  # fmt: skip
        known = set() if name == "head" else set(alive_nodes())
        node = start_node(run, name, args, num_cpus=1)
        wait_until(lambda k=known: len(set(alive_nodes()) - k) == 1, 90, name, run.nodes)
        node.node_id = (set(alive_nodes()) - known).pop()
    return alive_nodes


def deploy(run: RunState, dashboard: str, http_port: int, url: str, body: bytes) -> None:
    """``serve deploy`` the check's config and wait for 3 RUNNING replicas and an answer."""
    config_path = run.workdir / "serve.yaml"
    config_path.write_text(yaml.safe_dump(check_config(http_port), sort_keys=False))
    subprocess.run([str(BIN / "serve"), "deploy", str(config_path), "--address", dashboard],
                   cwd=ROOT, env=run.env, check=True, timeout=120, capture_output=True)  # fmt: skip
    wait_until(lambda: running_nodes(dashboard, MODEL), 180, "3 RUNNING replicas", run.nodes)
    wait_until(lambda: httpx.put(url, content=body, timeout=CLIENT_TIMEOUT_S).status_code == 200,
               60, "the first prediction", run.nodes)  # fmt: skip


def with_load(
    url: str, body: bytes, clients: int, action: Callable[[], None], after_s: float
) -> list[Result]:
    """Run ``action`` while ``clients`` request loops run; keep them going ``after_s`` more."""
    results: list[Result] = []
    stop = threading.Event()
    loops = [
        threading.Thread(target=load_loop, args=(url, body, stop, results, 0.05)) for _ in range(clients)
    ]
    for thread in loops:
        thread.start()
    try:
        action()
        time.sleep(after_s)
    finally:
        stop.set()
        for thread in loops:
            thread.join()
    return results


def main() -> int:
    """Run the check and print the report; the exit status says whether it passed."""
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="rtm-", dir="/tmp"))  # short: unix socket paths
    env = {**os.environ, "RAY_TMPDIR": str(workdir), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    # Everything listens on 127.0.0.1 of this machine only; token auth (Ray's default) would
    # need the token passed to every CLI call and REST request of the check for no gain here.
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("RAY_ADDRESS", None)  # never attach to somebody else's cluster
    run = RunState(workdir, env)
    gcs, dash_port, client_port, http_port = free_ports(4, run.ports)
    dashboard = f"http://127.0.0.1:{dash_port}"
    url = f"http://127.0.0.1:{http_port}/predictions/{MODEL}"
    import skimage

    body = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    timings: dict[str, float] = {}
    rows: list[str] = []
    failures: list[str] = []
    try:
        alive_nodes = start_cluster(run, gcs, dash_port, client_port)
        timings["3 nodes up"] = time.monotonic() - began
        names = {n.node_id: n.name for n in run.nodes}
        deployed_at = time.monotonic()
        deploy(run, dashboard, http_port, url, body)
        timings["deploy -> serving"] = time.monotonic() - deployed_at

        from ray.util.state import list_actors

        spread = running_nodes(dashboard, MODEL) or []
        ingress_nodes = {node for _, node in replicas(dashboard)["ingress"]}
        # Cross-check Serve's view with Ray's own: live ServeReplica actors per node.
        actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
        prefix = f"ServeReplica:{MODEL}:"
        actor_spread = Counter(names.get(a.node_id) for a in actors if a.class_name.startswith(prefix))
        print(f"replicas per node (Serve):     {dict(Counter(names[n] for n in spread))}")
        print(f"replicas per node (state API): {dict(actor_spread)}")
        print(f"ingress on: {[names.get(n, n) for n in ingress_nodes]}")
        print(f"memory of the whole cluster (PSS): {cluster_memory_mb(run):.0f} MB")
        if len(set(spread)) < 2 or len(actor_spread) < 2:
            failures.append("replicas did not spread over more than one node")
        steady = with_load(url, body, 1, lambda: None, after_s=5)
        rows.append(summarize("steady, 1 client", steady))

        # The victim: the worker with most replicas, preferring one without the ingress.
        workers = [n for n in run.nodes if n.name != "head"]
        victim = max(workers, key=lambda n: (spread.count(n.node_id), n.node_id not in ingress_nodes))
        victim_id, killed_at = victim.node_id, 0.0

        def kill_and_recover() -> None:
            nonlocal killed_at
            time.sleep(2)
            killed_at = time.monotonic()
            kill_group(victim.process, signal.SIGKILL)
            victim.process.wait(timeout=10)
            victim.node_id = "killed"
            try:
                wait_until(lambda: victim_id not in alive_nodes(), 120, "the node marked dead", run.nodes)
                timings["kill -> node DEAD"] = time.monotonic() - killed_at
                wait_until(lambda: (n := running_nodes(dashboard, MODEL)) and victim_id not in n,
                           180, "rescheduled replicas", run.nodes)  # fmt: skip
                timings["kill -> 3 RUNNING"] = time.monotonic() - killed_at
            except TimeoutError as exc:
                failures.append(str(exc))

        faulted = with_load(url, body, 2, kill_and_recover, after_s=5)
        rows.append(summarize("before kill, 2 clients", [r for r in faulted if r.sent_at < killed_at]))
        rows.append(
            summarize(f"kill {victim.name} and after", [r for r in faulted if r.sent_at >= killed_at])
        )
        final = running_nodes(dashboard, MODEL) or []
        print(f"killed {victim.name} ({spread.count(victim_id)} replicas on it) with SIGKILL")
        print(f"replicas per node after: {dict(Counter(names.get(n, n) for n in final))}")
        slow = [r for r in steady + faulted if r.seconds >= CLIENT_TIMEOUT_S or "Timeout" in r.outcome]
        if slow:
            failures.append(f"{len(slow)} requests hit the {CLIENT_TIMEOUT_S:.0f}s client deadline")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        for log in sorted(workdir.glob("*.log")):
            print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-1500:]}")
    finally:
        stopping = time.monotonic()
        stop_all(run)
        timings["stop everything"] = time.monotonic() - stopping
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| phase                    | requests | errors | p50 (ms) | max (ms) | error kinds")
    print("|--------------------------|---------:|-------:|---------:|---------:|------------")
    print("\n".join(rows) + "\n")
    for what, seconds in [*timings.items(), ("total runtime", time.monotonic() - began)]:
        print(f"{what:<20} {seconds:6.1f} s")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
