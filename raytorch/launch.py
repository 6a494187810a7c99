"""Start a local Ray cluster the way `make serve` wants it, then `serve run` a config.

``serve run`` alone starts Ray with defaults: Ray's own Prometheus metrics land on a random
port. This starts Ray first (metrics on a fixed port, dashboard on 127.0.0.1) and then hands
over to Serve's own ``serve run`` command, which sees Ray running and uses it::

    python -m raytorch.launch configs/quickstart.yaml --metrics-port 8080

Before anything starts it checks that the config's HTTP port is free, and names the process
holding it if not. SIGTERM (or Ctrl-C) stops ``serve run`` and the local cluster with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from deployments.common.ports import describe_port_owner, port_owner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the launcher."""
    parser = argparse.ArgumentParser(prog="python -m raytorch.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a Serve config file, e.g. configs/quickstart.yaml")
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


def main(argv: list[str] | None = None) -> int:
    """Start Ray, then run ``serve run CONFIG`` in this process until stopped."""
    args = parse_args(argv)
    ports = [http_port(args.config), grpc_port(args.config), args.metrics_port, args.dashboard_port]
    taken = taken_ports([port for port in ports if port is not None])
    if taken:
        print(
            "Cannot start: " + "; ".join(taken) + ". Stop that process (a server left over from an "
            "earlier run?) or choose other ports.",
            file=sys.stderr,
        )
        return 2
    from raytorch import dashboard, prometheus

    metrics = None
    if args.prometheus:  # before Ray starts: see start_for_server
        try:
            metrics = prometheus.start_for_server(args.config, args.metrics_port, args.prometheus_port)
        except prometheus.PrometheusError as exc:
            print(f"--prometheus: {exc}", file=sys.stderr)
            return 1
    import ray
    from ray.serve.scripts import cli

    ray.init(
        namespace="serve",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=args.dashboard_port,
        _metrics_export_port=args.metrics_port,
    )
    print(
        f"Ray metrics: http://127.0.0.1:{args.metrics_port}/metrics  "
        f"dashboard: http://127.0.0.1:{args.dashboard_port}",
        flush=True,
    )
    dashboard.announce(args.dashboard_port, also=(f"Prometheus: {metrics.url}/graph",) if metrics else ())
    try:
        return cli.main(args=["run", args.config], prog_name="serve", standalone_mode=True)
    finally:
        if metrics:
            metrics.stop()


if __name__ == "__main__":
    sys.exit(main())
