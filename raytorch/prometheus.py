"""A local Prometheus for `make serve METRICS=1`: request rate, latency, batch sizes over time.

Runs Debian's ``prometheus`` (installed with apt-get when asked and missing) as a child of the
launcher, bound to 127.0.0.1, with the shipped ``configs/prometheus.yml`` pointed at this
server's ports: the serving port's ``/metrics`` (job ``raytorch``) and Ray's metrics port (job
``ray``). It keeps its data in ``<state dir>/prometheus`` and its log in
``<log dir>/prometheus.log``, and stops with the server (also if the launcher is killed).

Ray 2.60's dashboard draws its Metrics tab and Serve graphs with Grafana only (it needs both
Prometheus and Grafana), so the graphs are on Prometheus's own page, ``/graph``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from deployments.common.environment import Environment

DEFAULT_PORT = 9090
APT_PACKAGE = "prometheus"
# In the package (raytorch/configs links to the checkout's configs/), so an installed wheel has it.
SHIPPED_CONFIG = Path(__file__).resolve().parent / "configs" / "prometheus.yml"
# Read by Ray's dashboard at start: its Prometheus health check and the Grafana data source
# it provisions point here instead of the default localhost:9090.
RAY_PROMETHEUS_HOST_ENV = "RAY_PROMETHEUS_HOST"
RETENTION = "15d"
_PR_SET_PDEATHSIG = 1
# Prometheus is on 127.0.0.1: never ask it through an HTTP_PROXY from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(Exception):
    """Prometheus is missing, could not be installed, or did not start."""


def install(package: str = APT_PACKAGE) -> str:
    """Path of the ``prometheus`` binary, installing Debian's package with apt-get if missing."""
    found = shutil.which("prometheus")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise PrometheusError(f"prometheus is not installed and there is no apt-get: install {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    install_cmd = [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y"]
    # No recommends: they would add prometheus-node-exporter, a second daemon.
    install_cmd += ["--no-install-recommends", package]
    print(f"Installing Debian's {package} package: {' '.join(install_cmd)}", flush=True)
    if subprocess.call(install_cmd) != 0:
        # A fresh machine may not have the package lists yet.
        subprocess.call([*sudo, "apt-get", "update"])
        if subprocess.call(install_cmd) != 0:
            raise PrometheusError(f"`{' '.join(install_cmd)}` failed (as root, or with sudo, it should not)")
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusError(f"{package} installed, but no prometheus binary on PATH")
    return found


def serving_port(serve_config: str | Path) -> int:
    """The HTTP port a Serve config listens on (Serve's default: 8000)."""
    config = yaml.safe_load(Path(serve_config).read_text()) or {}
    return int((config.get("http_options") or {}).get("port", 8000))


def scrape_config(serving: int, ray_metrics: int, template: Path = SHIPPED_CONFIG) -> dict:
    """The shipped scrape config, with its two jobs pointed at this server's ports."""
    config = yaml.safe_load(template.read_text())
    ports = {"raytorch": serving, "ray": ray_metrics}
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    missing = sorted(set(ports) - set(jobs))
    if missing:
        raise PrometheusError(f"{template} has no scrape job named {', '.join(missing)}")
    for name, port in ports.items():
        jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return config


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # SIGTERM Prometheus if the launcher dies without cleaning up (SIGKILL, OOM).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Prometheus:
    """A running Prometheus on 127.0.0.1 and how to stop it."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Prometheus flushes its data), then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    serving: int,
    ray_metrics: int,
    port: int = DEFAULT_PORT,
    data_dir: Path | None = None,
    log_dir: Path | None = None,
    binary: str = "prometheus",
    ready_timeout_s: float = 30.0,
) -> Prometheus:
    """Start Prometheus on 127.0.0.1:``port`` scraping the two ports; return once it is ready.

    ``data_dir`` defaults to ``$RAYTORCH_STATE_DIR/prometheus`` (``.raytorch/prometheus``),
    ``log_dir`` to ``$RAYTORCH_LOG_DIR`` (``.raytorch/logs``), as the server's own files.
    """
    env = Environment()
    state = Path(env.state_dir or ".raytorch")
    data_dir = Path(data_dir or state / "prometheus").resolve()
    log_dir = Path(log_dir or env.log_dir or state / "logs").resolve()
    if _port_taken(port):
        raise PrometheusError(
            f"port {port} is taken (Debian's own prometheus service? `systemctl disable --now "
            "prometheus`); choose another with PROMETHEUS_PORT=..."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(serving, ray_metrics), sort_keys=False))
    log_path = log_dir / "prometheus.log"
    command = [
        binary,
        f"--config.file={config_path}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={data_dir / 'data'}",
        f"--storage.tsdb.retention.time={RETENTION}",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    prometheus = Prometheus(process, port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise PrometheusError(f"prometheus exited ({process.returncode}):\n{tail}")
        try:
            with _LOCAL.open(f"{prometheus.url}/-/ready", timeout=2):
                return prometheus
        except OSError:
            time.sleep(0.1)
    prometheus.stop()
    raise PrometheusError(f"prometheus was not ready after {ready_timeout_s:.0f}s; see {log_path}")


def start_for_server(serve_config: str | Path, ray_metrics: int, port: int = DEFAULT_PORT) -> Prometheus:
    """What ``--prometheus`` does: install if missing, start, tell Ray's dashboard, print the URL.

    Call it before Ray starts: Ray's dashboard reads ``RAY_PROMETHEUS_HOST`` when it starts,
    and Prometheus is best forked from a process that has no threads yet.
    """
    binary = install()
    prometheus = start(serving_port(serve_config), ray_metrics, port, binary=binary)
    os.environ[RAY_PROMETHEUS_HOST_ENV] = prometheus.url
    print(
        f"Prometheus: {prometheus.url}/graph (scraping :{serving_port(serve_config)}/metrics and "
        f":{ray_metrics}/metrics; log {prometheus.log_path})",
        flush=True,
    )
    return prometheus
