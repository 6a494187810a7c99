"""Ray nodes on this machine for checks: each ``ray start --block`` in its own process group.

Every node gets ports of its own (Ray's defaults, such as 10001 and 52365, would collide with
other clusters on the machine) and the run's private RAY_TMPDIR, by which this run's
processes are found again and stopped, and no other. Never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cpu_usage import stack_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now, none of them in ``taken``."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            ports.append(port)
    return ports


@dataclass
class Node:
    """One ``ray start --block`` process (and the process group it leads)."""

    name: str
    process: subprocess.Popen
    node_id: str = ""


@dataclass
class RunState:
    """Everything this run started, so ``finally`` can stop exactly that."""

    workdir: Path
    env: dict[str, str]
    ports: set[int] = field(default_factory=set)
    nodes: list[Node] = field(default_factory=list)


def start_node(run: RunState, name: str, head_args: list[str], num_cpus: int) -> Node:
    """Start one Ray node on ports of its own; Ray's defaults (10001, 52365) would collide."""
    agent, agent_grpc, runtime_env, metrics, manager, objects = free_ports(6, run.ports)
    workers = ",".join(map(str, free_ports(16, run.ports)))
    command = [
        str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={manager}", f"--object-manager-port={objects}",
        f"--worker-port-list={workers}", "--object-store-memory=100000000",
        *head_args,
    ]  # fmt: skip
    log = open(run.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        command, cwd=ROOT, env=run.env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    node = Node(name, process)
    run.nodes.append(node)
    return node


def kill_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Signal the process group a node leads (its raylet, agents and workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def own_processes(run: RunState) -> list[int]:
    """PIDs started for this run: every Ray process inherits its private RAY_TMPDIR."""
    return stack_pids(f"RAY_TMPDIR={run.workdir}")


def cluster_memory_mb(run: RunState) -> float:
    """Proportional set size (shared pages split fairly) of all of this run's processes."""
    total_kb = 0
    for pid in own_processes(run):
        with contextlib.suppress(OSError, ValueError, StopIteration):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            total_kb += int(next(line for line in rollup if line.startswith("Pss:")).split()[1])
    return total_kb / 1024


def stop_all(run: RunState) -> None:
    """SIGTERM every node at once, wait, then SIGKILL whatever of this run is left."""
    for node in run.nodes:
        kill_group(node.process, signal.SIGTERM)
    for node in run.nodes:
        try:
            node.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(node.process, signal.SIGKILL)
            node.process.wait(timeout=10)
        kill_group(node.process, signal.SIGKILL)
    # Workers that left their node's process group.
    for pid in own_processes(run):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(check: Callable[[], object], timeout: float, what: str, nodes: list[Node]) -> float:
    """Poll ``check`` until it returns something truthy; return seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for node in nodes:
            if node.process.poll() is not None and node.node_id != "killed":
                raise RuntimeError(f"node {node.name} exited ({node.process.returncode})")
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
