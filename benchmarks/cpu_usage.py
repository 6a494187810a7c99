"""Where the CPU goes while a server is under load: CPU time per process role, from /proc.

The load generator snapshots the CPU time (user + system) of every process of the stack at the
start and the end of its measuring window; the difference, divided by the requests completed in
the window, says how many CPU milliseconds each part of the stack spent per request (HTTP
proxy, ingress, model replicas, Ray's own daemons, the load generator itself). On a machine with
N cores the raw ceiling spends ``N * 1000 / ceiling`` CPU ms per image; whatever a server spends
above that is its overhead, and this table says who spends it.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# First match wins; patterns are looked for in the process's command line (Ray workers rename
# themselves "ray::<actor>", so the command line names the actor).
ROLES: list[tuple[str, str]] = [
    # Our own processes first: their command lines carry flags such as --dashboard-port.
    ("raytorch.server", "serve run driver"),
    ("raytorch.launch", "launcher"),
    ("ServeReplica:ingress:", "ingress"),
    ("ServeReplica:management:", "management"),
    ("ServeReplica:", "model replicas"),
    ("ProxyActor", "HTTP proxy"),
    ("ServeController", "Serve controller"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("dashboard", "dashboard + agents"),
    ("runtime_env", "dashboard + agents"),
    ("multiprocessing.resource_tracker", "dashboard + agents"),
    ("multiprocessing.forkserver", "dashboard + agents"),  # the dashboard's subprocess modules
    ("log_monitor", "Ray log/monitor"),
    ("monitor.py", "Ray log/monitor"),
    ("serve run", "serve run driver"),
    ("ray.serve.scripts", "serve run driver"),
    ("model_service_worker", "TorchServe workers"),
    ("org.pytorch.serve", "TorchServe frontend"),
    ("java", "TorchServe frontend"),
    ("ray::IDLE", "idle Ray workers"),
]
# While an actor runs a call, Ray retitles its process after the call ("ray::0.handle_request...").
TRANSIENT = "ray::"
_known_roles: dict[int, str] = {}


def role_of(cmdline: str) -> str:
    """The part of the stack a process belongs to, named from its command line."""
    for pattern, role in ROLES:
        if pattern in cmdline:
            return role
    return "other"


def _cpu_seconds(proc: Path) -> float:
    # Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stack_pids(env_marker: str) -> list[int]:
    """Processes whose environment holds ``env_marker`` (``KEY=value``): the whole stack of
    one server, whatever the processes renamed themselves to."""
    marker = env_marker.encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
    return pids


def _role(pid: int, cmdline: str) -> str:
    role = role_of(cmdline)
    if role != "other":
        _known_roles[pid] = role
    elif cmdline.startswith(TRANSIENT):
        # A replica busy with a call: the role seen earlier, else (model replicas are the
        # ones that are busy all the time) a model replica.
        role = _known_roles.get(pid, "model replicas")
    return role


def cpu_snapshot(env_marker: str) -> dict[int, tuple[str, float]]:
    """Role and cumulative CPU seconds of every process of the stack, keyed by pid, plus
    this process as ``load generator``."""
    snapshot = {}
    for pid in stack_pids(env_marker):
        proc = Path("/proc") / str(pid)
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            snapshot[pid] = (_role(pid, cmdline), _cpu_seconds(proc))
    snapshot[os.getpid()] = ("load generator", _cpu_seconds(Path("/proc/self")))
    return snapshot


def per_request_ms(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], completed: int
) -> dict[str, float]:
    """CPU milliseconds per completed request for each role, largest first, with a total.
    A process that exited during the window is not counted; one that started counts whole."""
    if not completed:
        return {}
    spent: Counter = Counter()
    for pid, (role, seconds) in after.items():
        spent[role] += (seconds - before.get(pid, (role, 0.0))[1]) * 1000 / completed
    ordered = dict(sorted(((r, round(ms, 2)) for r, ms in spent.items() if ms > 0), key=lambda x: -x[1]))
    ordered["total"] = round(sum(ordered.values()), 2)
    return ordered
