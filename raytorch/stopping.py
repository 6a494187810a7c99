"""How the launcher stops: one signal drains and stops everything it started, a second forces.

The launcher makes itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``): Ray's worker
processes are grandchildren (children of the raylet), and when the raylet dies first they
would be re-parented to init and outlive the server. As a subreaper the launcher inherits
them instead, so after Ray's own shutdown it can find every process it started, directly or
not, and kill what is left. No Ray import here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ForcedStop(BaseException):
    """A second stop signal arrived: stop now, without draining."""


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the kernel does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int | None = None) -> list[int]:
    """Every live process below ``root`` (default: this process), from /proc."""
    root = root or os.getpid()
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":  # zombies are dead already; reaping them is enough
                children.setdefault(int(fields[1]), []).append(int(proc.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def reap() -> None:
    """Collect exited children (including adopted ones) so none stays a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def kill_descendants(grace_s: float = 2.0) -> list[int]:
    """SIGTERM every descendant, SIGKILL what is still there after ``grace_s``; returns the
    pids that had to be killed at all."""
    pids = descendants()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and descendants():
        reap()
        time.sleep(0.05)
    for pid in descendants():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    reap()
    return pids


def detach_from_terminal() -> bool:
    """Point stdout and stderr at /dev/null where they are a terminal (True if any was).

    After a hangup every write to the terminal fails (EIO): a print in the middle of the
    stop would end it with a traceback instead of a clean stop.
    """
    detached = False
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            # isatty() is already False for a hung-up terminal: a character device it is
            # (files, pipes and sockets, where logs go, are kept).
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
                detached = True
    return detached


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP handling: the first asks for a graceful stop, a second
    SIGTERM or SIGINT forces one (raises :class:`ForcedStop` in the main thread, wherever it
    is waiting).

    SIGHUP is what a closed terminal sends (a shell may send it twice: once itself, once as it
    exits): it stops the server like SIGTERM, detaches the output from the gone terminal, and a
    repeated SIGHUP never forces the stop.
    """

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self.requested = threading.Event()
        self.requested_at = 0.0
        self.received: list[str] = []
        self._on_first = on_first

    def install(self) -> StopSignals:
        """Take over SIGTERM, SIGINT and SIGHUP (also when SIGINT or SIGHUP was ignored, as in
        background jobs or under nohup)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            detach_from_terminal()
            if self.received:
                return
        self.received.append(signal.Signals(signum).name)
        if len(self.received) > 1:
            raise ForcedStop(self.received[-1])
        self.requested_at = time.monotonic()
        self.requested.set()
        if self._on_first is not None:
            self._on_first(self.received[0])

    def wait(self) -> str:
        """Block (in the main thread, so signals are handled) until a stop is requested."""
        while not self.requested.wait(0.5):
            pass
        return self.received[0]
