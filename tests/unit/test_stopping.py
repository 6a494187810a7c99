"""The launcher's stop machinery: signals, and finding every process the server started."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from raytorch.stopping import ForcedStop, StopSignals


def test_first_signal_asks_for_a_stop_and_the_second_forces_it() -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    seen: list[str] = []
    try:
        signals = StopSignals(seen.append).install()
        signal.raise_signal(signal.SIGTERM)
        assert signals.requested.is_set() and seen == ["SIGTERM"]
        with pytest.raises(ForcedStop):
            signal.raise_signal(signal.SIGINT)
        assert signals.received == ["SIGTERM", "SIGINT"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SCENARIO = """
import os, subprocess, sys, time
from raytorch.stopping import become_subreaper, descendants, kill_descendants
assert become_subreaper()
# A child whose own child ignores SIGTERM (as a busy Ray worker does) and outlives its parent.
code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")
child = subprocess.Popen([sys.executable, "-c", code])
deadline = time.monotonic() + 10
while len(descendants()) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
tree = descendants()
child.kill(); child.wait()  # the parent dies first: its child is re-parented, to us
time.sleep(0.2)
killed = kill_descendants(grace_s=0.5)
def running(pid):
    return os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"
alive = [pid for pid in tree if running(pid)]
print(len(tree), sorted(set(tree) - {child.pid}) == sorted(killed), alive)
"""


def test_orphaned_grandchildren_are_found_and_killed() -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "True", "[]"]


def test_sighup_stops_like_sigterm_and_a_repeated_one_does_not_force() -> None:
    """Issue 24: a closed terminal (SIGHUP) left the server and Ray running."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    seen: list[str] = []

    def unhandled(signum: int, frame: object) -> None:
        raise AssertionError("SIGHUP is not handled (by default it would end the process)")

    try:
        signal.signal(signal.SIGHUP, unhandled)
        signals = StopSignals(seen.append).install()
        signal.raise_signal(signal.SIGHUP)
        assert signals.requested.is_set() and seen == ["SIGHUP"]
        signal.raise_signal(signal.SIGHUP)  # the shell's own SIGHUP, then the kernel's
        assert signals.received == ["SIGHUP"]
        with pytest.raises(ForcedStop):
            signal.raise_signal(signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


HANGUP = """
import os, pty, signal, sys, time
from raytorch.stopping import StopSignals
master, slave = pty.openpty()
os.dup2(slave, 1)  # stdout is a terminal...
signals = StopSignals().install()
os.close(master)  # ... that goes away
os.kill(os.getpid(), signal.SIGHUP)
signals.wait()
print("stopping: a line the gone terminal would refuse", flush=True)
sys.stderr.write("clean\\n")
"""


def test_after_a_hangup_printing_does_not_break_the_stop() -> None:
    done = subprocess.run([sys.executable, "-c", HANGUP], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "clean"


def test_the_launcher_relays_a_hangup_as_a_hangup() -> None:
    """The server is told it was a hangup (so it stops writing to the terminal too)."""
    from raytorch.launch import stop

    sent: list[int] = []

    class FakeServer:
        def send_signal(self, sig: int) -> None:
            sent.append(sig)

        def poll(self) -> int:
            return 0

    stop(FakeServer(), "SIGHUP")  # type: ignore[arg-type]
    stop(FakeServer(), "SIGINT")  # type: ignore[arg-type]
    assert sent == [signal.SIGHUP, signal.SIGTERM]
