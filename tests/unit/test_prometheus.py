"""`make serve METRICS=1`'s Prometheus wiring, with a stand-in binary (the real one: e2e)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import yaml

from raytorch import prometheus
from raytorch.prometheus import PrometheusError, scrape_config, serving_port, start

ROOT = Path(__file__).resolve().parents[2]

# Answers /-/ready on the port it is given and writes its arguments down, as Prometheus would
# be started.
FAKE_PROMETHEUS = textwrap.dedent(
    """\
    #!{python}
    import http.server, json, sys
    args = sys.argv[1:]
    open({argv_file!r}, "w").write(json.dumps(args))
    host, port = next(a for a in args if a.startswith("--web.listen-address=")).split("=")[1].split(":")
    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/-/ready" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.HTTPServer((host, int(port)), Ready).serve_forever()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrape_config_is_the_shipped_one_on_this_servers_ports() -> None:
    shipped = yaml.safe_load((ROOT / "configs" / "prometheus.yml").read_text())
    config = scrape_config(serving=8123, ray_metrics=8181)
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"raytorch": ["127.0.0.1:8123"], "ray": ["127.0.0.1:8181"]}
    assert config["global"] == shipped["global"]
    assert [job["metrics_path"] for job in config["scrape_configs"]] == ["/metrics", "/metrics"]


def test_a_config_without_our_jobs_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "prometheus.yml"
    template.write_text("scrape_configs: [{job_name: other, static_configs: [{targets: ['x:1']}]}]\n")
    with pytest.raises(PrometheusError, match="no scrape job named ray, raytorch"):
        scrape_config(8000, 8080, template)


def test_serving_port_comes_from_the_serve_config(tmp_path: Path) -> None:
    assert serving_port(ROOT / "configs" / "quickstart.yaml") == 8000
    bare = tmp_path / "bare.yaml"
    bare.write_text("applications: []\n")
    assert serving_port(bare) == 8000  # Serve's default


def test_start_binds_loopback_keeps_files_in_the_state_dir_and_stops(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"
    binary = tmp_path / "prometheus"
    binary.write_text(FAKE_PROMETHEUS.format(python=sys.executable, argv_file=str(argv_file)))
    binary.chmod(0o755)
    port = _free_port()

    running = start(
        8123, 8181, port, data_dir=tmp_path / "data", log_dir=tmp_path / "logs", binary=str(binary)
    )
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).status_code == 200
        args = yaml.safe_load(argv_file.read_text())
        assert f"--web.listen-address=127.0.0.1:{port}" in args
        config_file = Path(next(a for a in args if a.startswith("--config.file=")).split("=", 1)[1])
        assert config_file.parent == tmp_path / "data"
        assert "127.0.0.1:8123" in config_file.read_text()
        assert running.log_path == tmp_path / "logs" / "prometheus.log"
    finally:
        running.stop()
    assert running.process.returncode is not None


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PrometheusError, match="PROMETHEUS_PORT"):
            start(8000, 8080, port, data_dir=tmp_path, log_dir=tmp_path, binary="/bin/true")


def test_a_prometheus_that_exits_shows_its_log(tmp_path: Path) -> None:
    binary = tmp_path / "prometheus"
    binary.write_text("#!/bin/sh\necho 'bad flag --foo' >&2\nexit 2\n")
    binary.chmod(0o755)
    with pytest.raises(PrometheusError, match="bad flag"):
        start(8000, 8080, _free_port(), data_dir=tmp_path, log_dir=tmp_path, binary=str(binary))


def test_install_uses_apt_only_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert prometheus.install() == "/usr/bin/prometheus"
    assert calls == []

    installed = iter([None, "/usr/bin/apt-get", "/usr/bin/prometheus"])
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: next(installed))
    monkeypatch.setattr(prometheus.os, "geteuid", lambda: 0)
    assert prometheus.install() == "/usr/bin/prometheus"
    assert len(calls) == 1
    assert calls[0][0] == "apt-get" and calls[0][-2:] == ["--no-install-recommends", "prometheus"]


def test_without_apt_get_install_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: None)
    with pytest.raises(PrometheusError, match="install prometheus"):
        prometheus.install()
