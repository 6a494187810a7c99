"""`make serve`: check the ports, start the server process, and stop everything it started.

::

    python -m raytorch.launch configs/quickstart.yaml --metrics-port 8080

The launcher is small and imports no Ray. It checks that the config's HTTP port and Ray's
metrics and dashboard ports are free (naming the process that holds one), optionally starts
Prometheus, then runs :mod:`raytorch.server` (Ray + Serve) in a session of its own and relays
signals to it:

- SIGTERM, SIGINT or SIGHUP (a closed terminal), to the launcher or to its whole process
  group, makes the server drain its ingress and stop Ray; the launcher then kills anything of
  the server still alive and exits with the server's code (0 after a clean stop), within
  ``STOP_BOUND_S``;
- a second signal (SIGTERM or SIGINT) stops everything at once.

Ray's worker processes take SIGTERM only between tasks, so a signal sent to every process at
once would reach them mid-drain; in its own session the server receives exactly one signal,
from the launcher. The launcher is a child subreaper, so nothing the server started can slip
out of its reach by being re-parented.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from deployments.common.ports import describe_port_owner, port_owner
from raytorch.stopping import ForcedStop, StopSignals, become_subreaper, kill_descendants

STOP_BOUND_S = 15.0
# The configs shipped in the package (raytorch/configs links to the checkout's configs/).
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the launcher."""
    parser = argparse.ArgumentParser(prog="python -m raytorch.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "config",
        help="a Serve config file, e.g. configs/quickstart.yaml (a shipped config's name works anywhere)",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus metrics port")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard port (on 127.0.0.1)")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus on 127.0.0.1 (apt-get installs it if missing); it stops with the server",
    )
    parser.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus's port (on 127.0.0.1)")
    return parser.parse_args(argv)


def http_port(config_path: str) -> int:
    """The port the config serves HTTP on (Serve's default 8000 when it names none)."""
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    return int((config.get("http_options") or {}).get("port", 8000))


def grpc_port(config_path: str) -> int | None:
    """The port the ingress serves gRPC on, when its args say ``grpc: true`` (else None)."""
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    serves_grpc = any(
        str(app.get("import_path", "")).endswith(":build_ingress") and (app.get("args") or {}).get("grpc")
        for app in config.get("applications") or []
    )
    return int((config.get("grpc_options") or {}).get("port", 9000)) if serves_grpc else None


def taken_ports(ports: list[int]) -> list[str]:
    """A sentence per port that some process already listens on."""
    return [f"port {port} is taken by {describe_port_owner(port)}" for port in ports if port_owner(port)]


def config_file(given: str) -> Path | None:
    """The config to serve: ``given`` when it is a file; else the shipped config of that name
    (``quickstart``, ``quickstart.yaml`` or ``configs/quickstart.yaml``), so a user who
    installed the wheel needs no checkout; None when neither exists."""
    if Path(given).is_file():
        return Path(given)
    name = Path(given).name
    for candidate in (name, f"{name}.yaml"):
        if candidate.endswith(".yaml") and (SHIPPED_CONFIGS / candidate).is_file():
            return SHIPPED_CONFIGS / candidate
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the server until a signal; the server's exit code (0 after a clean stop)."""
    args = parse_args(argv)
    found = config_file(args.config)
    if found is None:
        shipped = ", ".join(sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.yaml")))
        print(f"No config file {args.config!r} (shipped configs: {shipped})", file=sys.stderr)
        return 2
    args.config = str(found)
    ports = [http_port(args.config), grpc_port(args.config), args.metrics_port, args.dashboard_port]
    taken = taken_ports([port for port in ports if port is not None])
    if taken:
        print(
            "Cannot start: " + "; ".join(taken) + ". Stop that process (a server left over from an "
            "earlier run?) or choose other ports.",
            file=sys.stderr,
        )
        return 2
    from raytorch import prometheus

    metrics = None
    if args.prometheus:  # before Ray starts: see start_for_server
        try:
            metrics = prometheus.start_for_server(args.config, args.metrics_port, args.prometheus_port)
        except prometheus.PrometheusError as exc:
            print(f"--prometheus: {exc}", file=sys.stderr)
            return 1
    become_subreaper()
    command = [sys.executable, "-m", "raytorch.server", args.config]
    command += ["--metrics-port", str(args.metrics_port), "--dashboard-port", str(args.dashboard_port)]
    if metrics:
        command += ["--also", f"Prometheus: {metrics.url}/graph"]
    server = subprocess.Popen(command, start_new_session=True)
    StopSignals(lambda name: stop(server, name)).install()
    try:
        code = server.wait()
    except ForcedStop:
        server.kill()
        code = 1
    finally:
        kill_descendants(grace_s=0.5)
        if metrics:
            metrics.stop()
    return code


def stop(server: subprocess.Popen, received: str = "SIGTERM") -> None:
    """Ask the server to stop and kill it if it is still there ``STOP_BOUND_S`` later.

    The server gets SIGTERM, or SIGHUP when that is what came (a closed terminal: the server
    then also stops writing to it). The launcher blocks in ``waitpid`` meanwhile:
    ``Popen.wait(timeout=...)`` polls every 50 ms, which an idle server would pay for all day
    (0.17 % of a core, measured).
    """
    server.send_signal(signal.SIGHUP if received == "SIGHUP" else signal.SIGTERM)

    def kill_if_running() -> None:
        if server.poll() is None:
            print(f"The server did not stop within {STOP_BOUND_S:g}s: killing it.", file=sys.stderr)
            server.kill()

    bound = threading.Timer(STOP_BOUND_S, kill_if_running)
    bound.daemon = True
    bound.start()


if __name__ == "__main__":
    sys.exit(main())
