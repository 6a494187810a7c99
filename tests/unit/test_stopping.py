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
