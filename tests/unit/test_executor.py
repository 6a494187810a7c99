"""The model replica's inference thread: one OS thread for every torch call, and intra-op
threads that follow how many model replicas of the machine are busy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from deployments.model.executor import BusyReplicas, InferenceExecutor


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # torch's intra-op thread count is process-wide: leave it as the other tests expect it.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_load_and_every_batch_run_on_one_thread(tmp_path: Path) -> None:
    executor = InferenceExecutor("m", busy=BusyReplicas(tmp_path))
    seen = {executor.call(threading.get_ident)}

    async def batches() -> None:
        for _ in range(5):
            seen.add(await executor.run_batch(threading.get_ident, inputs=1))

    asyncio.run(batches())
    executor.shutdown()
    assert len(seen) == 1 and threading.get_ident() not in seen


def test_a_replica_alone_gets_every_core_and_shares_them_when_others_are_busy(tmp_path: Path) -> None:
    busy = BusyReplicas(tmp_path)
    executor = InferenceExecutor("m", busy=busy)
    executor.cores = 4  # a 4-core machine, whatever this one has
    alone = asyncio.run(executor.run_batch(torch.get_num_threads, inputs=1))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / str(other.pid)).touch()  # another live replica is running a batch
        shared = asyncio.run(executor.run_batch(torch.get_num_threads, inputs=1))
    finally:
        other.kill()
        other.wait()
    executor.shutdown()
    assert (alone, shared) == (4, 2)


def test_markers_of_dead_replicas_are_ignored_and_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / dead.stdout.strip()).touch()  # it died mid-batch
    busy = BusyReplicas(tmp_path)
    with busy.busy() as count:
        assert count == 1
    assert os.listdir(tmp_path) == []


def test_pinned_threads_ignore_the_machine(tmp_path: Path) -> None:
    executor = InferenceExecutor("m", fixed_threads=1, busy=BusyReplicas(tmp_path))
    assert asyncio.run(executor.run_batch(torch.get_num_threads, inputs=1)) == 1
    executor.pin_threads(2)
    assert asyncio.run(executor.run_batch(torch.get_num_threads, inputs=1)) == 2
    executor.shutdown()
    assert os.listdir(tmp_path) == []  # pinned executors do not count themselves busy


def test_fewer_threads_are_used_while_they_are_faster_and_the_larger_count_is_retried() -> None:
    from deployments.model.executor import ThreadChooser

    chooser = ThreadChooser()
    assert chooser.choose(2) == 2  # nothing measured: the machine's share
    chooser.record(2, 0.100, 1)  # a loaded machine: two threads are slow...
    chooser.record(1, 0.040, 1)  # ...and one is faster
    picks = [chooser.choose(2) for _ in range(chooser.EXPLORE_EVERY * 2)]
    assert picks.count(1) > picks.count(2) >= 1  # mostly 1, with a periodic try of 2
    for _ in range(10):
        chooser.record(2, 0.010, 1)  # the machine is free again: two threads win
    assert chooser.choose(2) == 2
    assert chooser.choose(1) == 1


def test_a_replica_keeps_to_its_share_in_the_gaps_of_sustained_load(tmp_path: Path) -> None:
    """Issue 28: under load a replica that starts in the gap between the other's batches must
    not take every core (the other's next batch would overlap it); a lone request later must."""
    executor = InferenceExecutor("m", busy=BusyReplicas(tmp_path))
    executor.cores = 2
    other = tmp_path / str(os.getppid())  # another replica, busy (a live process's marker)

    # Only the sharing is under test: the chooser's timing (noisy on a loaded machine) is not.
    executor.chooser.record = lambda *_: None  # type: ignore[method-assign]

    def threads_used() -> int:
        return torch.get_num_threads()

    def batch() -> int:
        return asyncio.run(executor.run_batch(threads_used, inputs=1))

    assert batch() == 2  # alone: the whole machine
    for _ in range(3):  # the other replica overlaps each batch from its start
        other.touch()
        assert batch() == 1
    other.touch()

    def overlapped_from_the_gap() -> int:
        other.unlink()  # a gap: the other replica is between two batches as this one starts...
        other.touch()  # ...and its next batch starts during this one
        return threads_used()

    assert asyncio.run(executor.run_batch(overlapped_from_the_gap, inputs=1)) == 1
    other.unlink()
    lone = [batch() for _ in range(4)]  # the load is over: requests arrive one at a time
    assert lone[0] == 1 and lone[-1] == 2
    executor.shutdown()


def _forged_markers(directory: Path) -> None:
    """What another local user could plant: markers named after live processes."""
    for pid in (1, os.getppid()):
        (directory / str(pid)).touch()


def test_busy_markers_in_a_directory_others_can_write_are_not_trusted(tmp_path: Path) -> None:
    """Issue 24: a busy directory others may write is made private and cleared before use."""
    shared = tmp_path / "busy"
    shared.mkdir()
    os.chmod(shared, 0o777)
    _forged_markers(shared)
    busy = BusyReplicas(shared)
    with busy.busy() as count:
        assert count == 1
    assert busy.directory == shared
    assert oct(shared.stat().st_mode & 0o777) == oct(0o700)


def test_busy_markers_of_another_users_directory_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: a busy directory another user created first is never read."""
    planted = tmp_path / "busy"
    planted.mkdir(mode=0o755)
    _forged_markers(planted)
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # as if it belonged to someone else
    busy = BusyReplicas(planted)
    monkeypatch.undo()
    assert busy.directory != planted
    with busy.busy() as count:
        assert count == 1
    assert sorted(os.listdir(planted)) == sorted(["1", str(os.getppid())])  # left alone


def test_a_link_in_place_of_the_busy_directory_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    _forged_markers(target)
    link = tmp_path / "busy"
    link.symlink_to(target)
    busy = BusyReplicas(link)
    assert busy.directory not in (link, target)
    with busy.busy() as count:
        assert count == 1
