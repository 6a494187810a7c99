"""Our server under test: configs generated from ``configs/densenet.yaml`` with the model swapped,
started with the e2e tests' ``serve_run`` harness (own ports, own RAY_TMPDIR, stopped by PID).

A *variant* is one lever setting (threads, replicas, batching, environment switches) applied on
top of the shipped config, so every lever is measured against the same baseline.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from cpu_usage import role_of, stack_pids

from tests.e2e.serve_cluster import ROOT, ServeCluster, free_port, load_config, serve_run

MODEL_APP = "model"

# Lever settings measured against the shipped config: patches of the model app's `args`
# (`model`, `batching`, `resources`), of the ingress `args`, and extra environment.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "threads2": {"model": {"torch_threads": 2}},
    # Idle OpenMP threads sleep instead of spinning: oversubscribed replicas waste less CPU.
    "omp_passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    # The layout shipped before densenet.yaml moved to 2 single-threaded replicas.
    "single": {"model": {"torch_threads": None}, "resources": {"num_replicas": 1, "num_cpus": 1}},
    "replicas2": {"model": {"torch_threads": 1}, "resources": {"num_replicas": 2, "num_cpus": 0.9}},
    "batch1": {"batching": {"max_batch_size": 1}},
    "batch16": {"batching": {"max_batch_size": 16}},
    "no_idle_gate": {"batching": {"wait_for_idle_model": False}},  # Serve's batching as is
    "wait0": {"batching": {"batch_wait_timeout_s": 0.0}},
    "wait20ms": {"batching": {"batch_wait_timeout_s": 0.02}},
    "ongoing8": {"resources": {"max_ongoing_requests": 8}},
    "ongoing64": {"resources": {"max_ongoing_requests": 64}},
    "direct_ingress": {"env": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}},
    # Serve's request-path switches (ray/serve/_private/constants.py): user code and the
    # router on the replica's own event loop, request logs buffered, no log copy to stderr.
    "same_loop": {
        "env": {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        }
    },
    "quiet_logs": {"env": {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000", "RAY_SERVE_LOG_TO_STDERR": "0"}},
    "grpc": {"env": {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}},  # gRPC between deployments
    "throughput_optimized": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}},  # all of the above
    "no_management": {"drop_apps": ["management"]},
    "no_grouping": {"ingress": {"group_calls": False}},  # one Serve call per input
    "quiet_console": {"ingress": {"access_log_console": False}},
    "omp_active": {"env": {"OMP_WAIT_POLICY": "ACTIVE"}},
    "gomp_spin_low": {"env": {"GOMP_SPINCOUNT": "10000"}},
    "threads_fixed1": {"model": {"torch_threads": 1}},
    "eager": {"model": {"channels_last": False}},  # the model as torchvision builds it
    "ingress5": {"ingress": {"max_ongoing_requests": 5}},  # Serve's default, before this branch
    "discovery1": {"ingress": {"discovery_interval_s": 1}},
    # Before this branch's transport: Serve's Python proxy in front, calling the ingress.
    "serve_proxy": {"proxy_location": "HeadOnly"},
}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def variant_patch(names: str) -> dict[str, Any]:
    """The merged patch of ``a+b+c`` (levers combined left to right)."""
    patch: dict[str, Any] = {}
    for name in names.split("+"):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        patch = _merge(patch, VARIANTS[name])
    return patch


def make_config(model: str, weights: Path, variant: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``configs/densenet.yaml`` serving ``model`` (torchvision architecture, given weights
    file) with ``variant`` applied; returns the config and the extra environment it needs."""
    config = load_config("densenet.yaml")
    patch = variant_patch(variant)
    config["applications"] = [
        a for a in config["applications"] if a["name"] not in patch.get("drop_apps", [])
    ]
    for app in config["applications"]:
        if app["import_path"].endswith(":build_model"):
            app["name"] = model
            args = app["args"]
            args["model"].update(name=model, source={"architecture": model, "weights": str(weights)})
            args["resources"]["num_gpus"] = 0  # CPU benchmark: no GPU request, no fallback note
            for section in ("model", "batching", "resources"):
                args[section] = _merge(args[section], patch.get(section, {}))
        elif app["import_path"].endswith(":build_ingress"):
            app["args"] = _merge(app["args"], patch.get("ingress", {}))
    if "proxy_location" in patch:
        config["proxy_location"] = patch["proxy_location"]
    return config, dict(patch.get("env", {}))


def predict_url(cluster: ServeCluster, model: str) -> str:
    return f"{cluster.base_url}/predictions/{model}"


def wait_first_prediction(cluster: ServeCluster, model: str, image: bytes, timeout: float) -> float:
    """Seconds from ``serve run`` start until ``model`` first answers 200."""

    def answered() -> bool:
        return httpx.put(predict_url(cluster, model), content=image, timeout=30).status_code == 200

    return cluster.wait_for(answered, timeout, f"a first prediction of {model}")


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a benchmark ``serve run``: this checkout's code in every replica."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # `serve` of the interpreter running the benchmark, whatever PATH says.
    bin_dir = str(Path(sys.executable).parent)
    return {"PYTHONPATH": path, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(extra or {})}


@contextlib.contextmanager
def running(config: dict[str, Any], env: dict[str, str]) -> Iterator[ServeCluster]:
    """``config`` served the way `make serve` serves it (the launcher, Ray's metrics and
    dashboard on ports of their own); stopped (only it) on exit."""
    launcher = ["--metrics-port", str(free_port()), "--dashboard-port", str(free_port())]
    with serve_run(config, extra_env=bench_env(env), launcher_args=launcher) as cluster:
        yield cluster


def stack_pss(env_marker: str) -> dict[str, Any]:
    """PSS (shared pages split fairly) summed over every process whose environment holds
    ``env_marker`` (``KEY=value``), in MB, with the count and a split by part of the stack.
    Ray workers rename themselves, so the environment, not the command line, finds them."""
    by_role: dict[str, float] = {}
    count = 0
    for pid in stack_pids(env_marker):
        proc = Path("/proc") / str(pid)
        with contextlib.suppress(OSError, ValueError, StopIteration):
            rollup = (proc / "smaps_rollup").read_text().splitlines()
            kb = int(next(line for line in rollup if line.startswith("Pss:")).split()[1])
            role = role_of((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            by_role[role] = by_role.get(role, 0.0) + kb / 1024
            count += 1
    ordered = dict(sorted(((r, round(mb, 1)) for r, mb in by_role.items()), key=lambda x: -x[1]))
    return {"pss_mb": round(sum(by_role.values()), 1), "processes": count, "by_role": ordered}


def idle_memory(cluster: ServeCluster, settle_s: float) -> dict[str, Any]:
    """PSS of the whole stack (serve run, raylet, GCS, dashboard, replicas) after idling."""
    time.sleep(settle_s)
    return stack_pss(f"RAY_TMPDIR={cluster.workdir}")


def register_to_first_prediction(
    store: Path, mar_name: str, model: str, image: bytes, state_dir: Path, timeout: float
) -> dict[str, float]:
    """Start ingress + management only, register ``mar_name`` from ``store`` over the
    management API, and time POST /models until the first 200 prediction."""
    token = "bench-token-0123456789"
    config = load_config("densenet.yaml")
    config["applications"] = [a for a in config["applications"] if a["name"] in ("ingress", "management")]
    env = {"RAYTORCH_TOKEN": token, "RAYTORCH_MODEL_STORE": str(store), "RAYTORCH_STATE_DIR": str(state_dir)}
    auth = {"Authorization": f"Bearer {token}"}
    with running(config, env) as cluster:
        cluster.wait_for(
            lambda: httpx.get(f"{cluster.base_url}/models", headers=auth, timeout=10).status_code == 200,
            timeout,
            "the management API",
        )
        start = time.monotonic()
        reply = httpx.post(
            f"{cluster.base_url}/models?url={mar_name}&model_name={model}&num_cpus=0.5",
            headers=auth,
            timeout=timeout,
        )
        registered = time.monotonic() - start
        if reply.status_code != 200:
            raise RuntimeError(f"register answered {reply.status_code}: {reply.text}")
        deadline = start + timeout
        while time.monotonic() < deadline:
            answer = httpx.put(f"{cluster.base_url}/predictions/{model}", content=image, timeout=30)
            if answer.status_code == 200:
                return {
                    "register_s": round(registered, 2),
                    "first_prediction_s": round(time.monotonic() - start, 2),
                }
            time.sleep(0.05)
        raise RuntimeError(f"no prediction of {model} within {timeout}s of registering it")
