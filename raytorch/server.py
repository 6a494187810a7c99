"""The server process `make serve` runs: a local Ray cluster serving one config, stopped cleanly.

Started by :mod:`raytorch.launch` in a session of its own (so a signal sent to the launcher's
process group reaches Ray's processes only through this process's orderly stop), it:

- starts Ray with its metrics on a fixed port and the dashboard on 127.0.0.1, with Serve's and
  Ray's idle work turned down (:data:`QUIET_ENV`); when the config serves on a loopback host,
  every port of Ray listens on 127.0.0.1 only (:data:`LOOPBACK_ONLY_ENV`);
- deploys the config's applications, as ``serve run CONFIG`` does (built in this process when
  they are all raytorch's own: :mod:`raytorch.app_build`);
- on SIGTERM, SIGINT or SIGHUP drains the ingress (requests in flight finish, new connections are
  refused), stops Ray and every process it started, and exits 0; a second signal stops at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from deployments.common.ray_private import delete_application, deploy_without_waiting, start_ray, start_serve
from deployments.common.serve_loopback import LOOPBACK_ONLY_ENV
from raytorch import app_build
from raytorch.stopping import ForcedStop, StopSignals, become_subreaper, kill_descendants

# Longest wait for the ingress to drain (its replicas finish requests in flight and close their
# socket); then the rest stops. Requests still running after it are cut off.
DRAIN_TIMEOUT_S = 9.0
RAY_SHUTDOWN_TIMEOUT_S = 4.0
# Ray's and Serve's background work, turned down where it costs an idle server CPU and buys
# nothing a user notices (issue 20; benchmarks/idle_cpu.py measured each, docs/performance.md).
# Read by every Ray process at start; a value already in the environment wins.
QUIET_ENV: dict[str, str] = {
    # Serve's controller loop: 10 times a second by default. Replica restarts and scaling are
    # decided up to 0.4 s later; /ping and routing follow the replicas' own health checks.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # Serve's per-request metrics are flushed to Ray's exporter once a second, not 10 times.
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    # The dashboard agent's process statistics every 10 s (5 s by default).
    "REPORTER_UPDATE_INTERVAL_MS": "10000",
    # Its scan of the event files every 10 s (2 s by default).
    "SCAN_EVENT_DIR_INTERVAL_SECONDS": "10",
}


def serves_loopback_only(config: dict[str, Any]) -> bool:
    """Whether the config's HTTP host (which gRPC shares) is a loopback address: then nothing
    of Ray needs to be reachable from the network either. Serve's default host is every
    interface."""
    host = str((config.get("http_options") or {}).get("host", "0.0.0.0")).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: leave Ray as it is
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the server process (the launcher passes them on)."""
    parser = argparse.ArgumentParser(prog="python -m raytorch.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a Serve config file, e.g. configs/quickstart.yaml")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus metrics port")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard port (on 127.0.0.1)")
    parser.add_argument(
        "--also", action="append", default=[], help="a line to print under the dashboard banner"
    )
    return parser.parse_args(argv)


def load_config(path: str) -> dict[str, Any]:
    """The Serve config file as a dict."""
    return yaml.safe_load(Path(path).read_text()) or {}


def ingress_apps(config: dict[str, Any]) -> list[str]:
    """Names of the config's applications built by our ingress builder (drained first)."""
    return [
        app["name"]
        for app in config.get("applications") or []
        if str(app.get("import_path", "")).endswith(":build_ingress")
    ]


def deploy(config: dict[str, Any]) -> None:
    """Start Serve with the config's options and deploy its applications (as `serve run`)."""
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = start_serve(schema)
    if app_build.buildable_in_process(config):
        app_build.deploy_in_process(config)  # no build task per application (see app_build)
    else:
        deploy_without_waiting(client, schema)
    print(f"Deployed {len(schema.applications)} applications; serving once they are ready.", flush=True)


def _bounded(step: str, work: Any, timeout_s: float) -> None:
    """Run ``work()`` in a helper thread for at most ``timeout_s`` (a hung step must not hang
    the stop); the main thread keeps handling signals meanwhile."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported below; the stop goes on either way
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"stop-{step}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        print(f"Stopping: {step} took over {timeout_s:g}s; going on without it.", file=sys.stderr, flush=True)
    elif errors:
        print(f"Stopping: {step} failed ({errors[0]}); going on.", file=sys.stderr, flush=True)


def stop_server(config: dict[str, Any]) -> float:
    """Drain the ingress, stop Serve and Ray, kill whatever the server started and is left.
    Returns the seconds it took."""
    import ray

    started = time.monotonic()
    for app in ingress_apps(config):
        _bounded(f"draining {app}", lambda app=app: delete_application(app, True), DRAIN_TIMEOUT_S)
    _bounded("stopping Ray", ray.shutdown, RAY_SHUTDOWN_TIMEOUT_S)
    kill_descendants()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """Start Ray and serve ``CONFIG`` until SIGTERM/SIGINT/SIGHUP; 0 after a clean stop."""
    args = parse_args(argv)
    config = load_config(args.config)
    from raytorch import dashboard

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)  # inherited by every Ray process; the user's value wins
    if serves_loopback_only(config):
        for key, value in LOOPBACK_ONLY_ENV.items():
            os.environ.setdefault(key, value)
    become_subreaper()
    # Replicas import this checkout's packages, as `serve run` lets them (--app-dir .).
    sys.path.insert(0, os.getcwd())
    start_ray(args.dashboard_port, args.metrics_port)
    signals = StopSignals(lambda name: print(f"\n{name}: stopping (again to stop at once)", flush=True))
    signals.install()  # after ray.init, which installs its own SIGTERM handler
    print(
        f"Ray metrics: http://127.0.0.1:{args.metrics_port}/metrics  "
        f"dashboard: http://127.0.0.1:{args.dashboard_port}",
        flush=True,
    )
    try:
        try:
            deploy(config)
        except Exception as exc:  # an invalid config: say why, then stop what was started
            print(f"Cannot serve {args.config}: {exc}", file=sys.stderr, flush=True)
            stop_server(config)
            return 1
        dashboard.announce(args.dashboard_port, also=tuple(args.also))
        signals.wait()
        seconds = stop_server(config)
        print(f"Stopped in {seconds:.1f}s.", flush=True)
        return 0
    except ForcedStop:
        print("Second signal: stopping now.", flush=True)
        kill_descendants(grace_s=0.5)
        return 1


if __name__ == "__main__":
    sys.exit(main())
