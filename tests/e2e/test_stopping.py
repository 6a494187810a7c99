"""Stopping `make serve` (``python -m raytorch.launch``) stops everything it started.

systemd, Kubernetes and supervisors send SIGTERM to the process group; a terminal sends SIGINT
(Ctrl-C) to the launcher, or SIGHUP to its process group when it is closed. Either way: no
process of the server remains, every port it opened is free again, the stop is bounded, a
request in flight when the signal came is answered, and the launcher exits 0. A start that
finds its port taken says so, naming the holder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_cluster import ROOT, ServeCluster, free_port, load_config, serve_run
from tests.fixtures.specs import photo_path

pytestmark = pytest.mark.e2e

STOP_BOUND_S = 15.0  # documented in docs/operating.md


def server_processes(cluster: ServeCluster) -> list[str]:
    """Live processes started for this server (they all carry its RAY_TMPDIR)."""
    marker = f"RAY_TMPDIR={cluster.workdir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(f"{proc.name} {(proc / 'comm').read_text().strip()}")
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def launched() -> ServeCluster:
    ports = {"metrics": free_port(), "dashboard": free_port()}
    launcher = ["--metrics-port", str(ports["metrics"]), "--dashboard-port", str(ports["dashboard"])]
    with serve_run(load_config("quickstart.yaml"), launcher_args=launcher) as cluster:
        cluster.ports = [int(cluster.base_url.rsplit(":", 1)[1]), *ports.values()]  # type: ignore[attr-defined]
        image = photo_path("chelsea.png").read_bytes()
        url = f"{cluster.base_url}/predictions/efficientnet_lite0"

        def answers() -> bool:
            return httpx.put(url, content=image).status_code == 200

        cluster.wait_for(answers, timeout=240, what="the first prediction")
        yield cluster


def stop_and_check(cluster: ServeCluster, send: str) -> None:
    process = cluster.process
    started = time.monotonic()
    if send == "group":
        os.killpg(process.pid, signal.SIGTERM)
    elif send == "hangup":  # a closed terminal: SIGHUP to its foreground process group
        os.killpg(process.pid, signal.SIGHUP)
    else:
        process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    took = time.monotonic() - started
    time.sleep(0.5)
    assert code == 0, cluster.log()[-3000:]
    assert took <= STOP_BOUND_S, f"stop took {took:.1f}s:\n{cluster.log()[-2000:]}"
    assert server_processes(cluster) == []
    assert not any(listening(port) for port in cluster.ports)  # type: ignore[attr-defined]
    assert "Stopped in" in cluster.log()


def test_sigterm_to_the_process_group_stops_everything() -> None:
    with launched() as cluster:
        stop_and_check(cluster, "group")


def test_sighup_from_a_closed_terminal_stops_everything() -> None:
    """Issue 24: SIGHUP used to end the launcher alone, leaving Ray running with the ports."""
    with launched() as cluster:
        stop_and_check(cluster, "hangup")


def test_sigint_to_the_launcher_alone_stops_everything_and_lets_requests_finish() -> None:
    with launched() as cluster:
        image = photo_path("chelsea.png").read_bytes()
        # One request with 32 inputs keeps the model busy for a while: it is in flight when
        # the signal comes, and must still be answered.
        files = [("data", (f"{i}.png", image, "image/png")) for i in range(32)]
        answer: dict[str, int] = {}

        def in_flight() -> None:
            url = f"{cluster.base_url}/predictions/efficientnet_lite0"
            answer["status"] = httpx.post(url, files=files, timeout=60).status_code

        client = threading.Thread(target=in_flight)
        client.start()
        time.sleep(0.5)
        stop_and_check(cluster, "launcher")
        client.join(timeout=30)
        assert answer.get("status") == 200


def test_a_taken_port_is_reported_with_its_holder() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = ROOT / "configs" / "quickstart.yaml"
    copy = Path(f"/tmp/rt-port-{port}.yaml")
    copy.write_text(config.read_text().replace("port: 8000", f"port: {port}"))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "raytorch.launch", str(copy), "--metrics-port", str(free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        holder.close()
        copy.unlink()
    assert done.returncode == 2
    assert f"port {port} is taken by pid {os.getpid()}" in done.stderr
