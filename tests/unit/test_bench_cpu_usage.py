"""The benchmark's CPU breakdown: who a process is, and CPU ms per request from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cpu_usage
from report import cpu_table


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::ServeReplica:ingress:Ingress", "ingress"),
        ("ray::ServeReplica:management:Management", "management"),
        ("ray::ServeReplica:resnet18:model:resnet18@1.0", "model replicas"),
        ("ray::ProxyActor.receive_asgi_messages", "HTTP proxy"),
        ("/venv/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "raylet"),
        ("java -cp ts.jar org.pytorch.serve.ModelServer", "TorchServe frontend"),
        # Our processes' flags name the dashboard: they are not the dashboard's.
        ("python -m raytorch.server c.yaml --metrics-port 8080 --dashboard-port 8265", "serve run driver"),
        ("python -m raytorch.launch c.yaml --metrics-port 8080 --dashboard-port 8265", "launcher"),
        ("/usr/bin/python3 something_else.py", "other"),
    ],
)
def test_processes_are_named_by_their_command_line(cmdline: str, role: str) -> None:
    assert cpu_usage.role_of(cmdline) == role


def test_a_busy_replica_keeps_the_role_it_was_seen_with() -> None:
    # Ray retitles a replica after the call it runs ("ray::0.handle_request...").
    assert cpu_usage._role(424242, "ray::ServeReplica:ingress:Ingress") == "ingress"
    assert cpu_usage._role(424242, "ray::0.handle_request_with_rejection") == "ingress"
    assert cpu_usage._role(424243, "ray::0.handle_request_with_rejection") == "model replicas"


def test_cpu_per_request_counts_each_process_once() -> None:
    before = {1: ("model replicas", 10.0), 2: ("ingress", 5.0), 3: ("HTTP proxy", 1.0)}
    after = {
        1: ("model replicas", 10.5),  # retitled or not, the pid is what is compared
        2: ("ingress", 5.1),
        4: ("model replicas", 0.2),  # started inside the window: counted whole
    }  # pid 3 exited: not counted
    spent = cpu_usage.per_request_ms(before, after, completed=10)
    assert spent == pytest.approx({"model replicas": 70.0, "ingress": 10.0, "total": 80.0})
    assert list(spent)[:2] == ["model replicas", "ingress"]  # largest first
    assert cpu_usage.per_request_ms(before, after, completed=0) == {}


def test_snapshot_finds_the_stack_by_its_environment_and_sees_it_work() -> None:
    marker = f"RAYTORCH_TEST_STACK={os.getpid()}-{time.monotonic_ns()}"
    busy = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    busy += "time.sleep(30)"
    env = {**os.environ, marker.split("=")[0]: marker.split("=", 1)[1]}
    proc = subprocess.Popen([sys.executable, "-c", busy], env=env)
    try:
        deadline = time.monotonic() + 20
        seconds = 0.0
        while time.monotonic() < deadline and seconds < 0.5:
            snapshot = cpu_usage.cpu_snapshot(marker)
            seconds = snapshot.get(proc.pid, ("", 0.0))[1]
            time.sleep(0.1)
        assert snapshot[proc.pid][0] == "other"
        assert seconds >= 0.5
        assert snapshot[os.getpid()][0] == "load generator"
    finally:
        proc.kill()
        proc.wait()


def test_report_table_puts_the_overhead_next_to_the_raw_ceiling() -> None:
    spent = {"model replicas": 50.0, "ingress": 8.0, "total": 58.0}
    point = {"concurrency": 16, "cpu_ms_per_request": spent}
    result = {"raw": {"best": {"images_per_s": 40.0}}, "systems": {"ours:default": {"points": [point]}}}
    lines = cpu_table(result, cpus=2)
    assert "50.0 CPU ms per image on 2 cores" in lines[0]
    assert "| ours:default | 16 | 50.0 | 8.0 | 0.0 | 58.0 |" in lines
