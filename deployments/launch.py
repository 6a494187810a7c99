"""Start a local Ray cluster the way `make serve` wants it, then `serve run` a config.

``serve run`` starts Ray with defaults: Ray's own Prometheus metrics land on a random port.
This starts Ray first (metrics on a fixed port, dashboard on 127.0.0.1) and then hands over
to Serve's own ``serve run`` command, which sees Ray running and uses it::

    python -m deployments.launch configs/quickstart.yaml --metrics-port 8080

SIGTERM (or Ctrl-C) stops ``serve run`` and the local cluster with it.
"""

from __future__ import annotations

import argparse
import os
import sys

# Serve 2.60's throughput switches (see docs/performance.md for what each one measured):
# HAProxy instead of the Python HTTP proxy, replicas taking HTTP themselves, gRPC between
# deployments, user code on the replica's own loop. Replica logs stay on the console.
THROUGHPUT_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LOG_TO_STDERR": "1",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the launcher."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.launch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("config", help="a Serve config file, e.g. configs/quickstart.yaml")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus metrics port")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard port (on 127.0.0.1)")
    parser.add_argument(
        "--haproxy",
        action="store_true",
        help=(
            "Serve's throughput mode: HAProxy in front instead of the Python proxy (measured "
            "+14%% req/s on resnet18). HAProxy's stats and metrics ports (8404, 9101) listen "
            "on all interfaces: use it behind a firewall."
        ),
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus on 127.0.0.1 (apt-get installs it if missing); it stops with the server",
    )
    parser.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus's port (on 127.0.0.1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start Ray, then run ``serve run CONFIG`` in this process until stopped."""
    args = parse_args(argv)
    if args.haproxy:
        # Read by every Ray process at import, so it must be set before Ray starts.
        os.environ.update(THROUGHPUT_ENV)
        print(
            "Throughput mode: HAProxy in front; its stats (:8404) and metrics (:9101) listen on all "
            "interfaces.",
            flush=True,
        )
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
