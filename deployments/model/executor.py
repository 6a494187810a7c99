"""Where a model replica runs torch: one dedicated OS thread, with intra-op threads chosen per batch.

OpenMP thread pools belong to the OS thread that uses them. A replica that ran its batches on
``asyncio.to_thread`` would rotate over a pool of threads, each growing its own OpenMP team
whose idle workers spin against the others (measured: a 2-thread resnet18 forward took 17 ms
that way against 12.7 ms on one thread that owns its team). So the model is loaded, warmed up
and run on a single thread for its whole life.

Intra-op threads follow the load of the machine: a batch that starts while no other model
replica on this machine is busy gets every core (a request that arrives alone gets the whole
machine), and once several replicas are busy each gets its share (one core per busy replica
on a 2-core machine), which is what gives the throughput. Replicas count each other through
marker files in a tmpfs directory, one per busy process, so no Ray call sits on the hot path.
A loaded machine can make more threads slower, not faster (an OpenMP team waits at every
barrier for its slowest thread): :class:`ThreadChooser` measures the time per input with each
thread count it uses and falls back to one thread while that is faster, trying the larger
count again now and then.

The instant is not enough under sustained load: a replica that starts its batch in the gap
between two of the other replica's batches sees it idle, takes both cores, and the other's
next batch then overlaps it (three threads on two cores; measured on densenet161: 0.74-0.76 of
the raw ceiling against 0.89-0.94 with one thread fixed). So the share also follows a smoothed
count of the replicas seen busy during this replica's recent batches: while the others keep
overlapping its batches, it keeps to its share even in a gap; a lone request (nothing
overlapped the last few batches) gets every core again. No Ray here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger("raytorch.executor")
T = TypeVar("T")


def machine_cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _default_busy_dir() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"raytorch-busy-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can write (created 0700 when missing).

    The busy markers live in a shared place (/dev/shm), where another local user could create
    the directory first and fill it with markers, throttling every replica to one thread. So a
    directory that is not ours, is a link, or that others may write is never trusted: one of
    ours that others could write is made private again and emptied; one that is not ours is
    left alone and a private directory of this process is used instead (replicas then do not
    see each other, and each uses every core).
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    try:
        info = path.lstat()
    except OSError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
        if stat.S_IMODE(info.st_mode) & 0o022:
            logger.warning("%s could be written by other users: made it private and cleared it", path)
            os.chmod(path, 0o700)
            for entry in os.listdir(path):
                with contextlib.suppress(OSError):
                    (path / entry).unlink()
        return path
    fallback = Path(tempfile.mkdtemp(prefix="raytorch-busy-"))
    logger.warning(
        "%s is not a directory of this user (uid %d): not trusting its busy markers; using %s, so "
        "this replica does not see how busy the others are",
        path, os.getuid(), fallback,
    )  # fmt: skip
    return fallback


class BusyReplicas:
    """Which model replicas of this machine are running a batch right now.

    A replica marks itself busy with a file named after its pid; markers of processes that
    died mid-batch are ignored (and removed), so a crash never starves the others.
    """

    def __init__(self, directory: Path | None = None, pid: int | None = None) -> None:
        self.directory = private_dir(directory or _default_busy_dir())
        self.pid = pid or os.getpid()
        self._marker = self.directory / str(self.pid)

    def count(self) -> int:
        """Busy replicas, this one included when it is busy."""
        busy = 0
        for name in os.listdir(self.directory):
            if not name.isdigit():
                continue
            if int(name) == self.pid or Path(f"/proc/{name}").exists():
                busy += 1
            else:
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
        return busy

    @contextlib.contextmanager
    def busy(self) -> Iterator[int]:
        """Mark this replica busy for the block; yields how many replicas are busy now."""
        self._marker.touch()
        try:
            yield self.count()
        finally:
            with contextlib.suppress(OSError):
                self._marker.unlink()


class ThreadChooser:
    """The intra-op threads of the next batch: the share of the machine this replica may use
    (``allowed``), or one thread while measurements show one thread is faster here."""

    EXPLORE_EVERY = 16  # batches between tries of the choice that is not the current best
    SMOOTHING = 0.3
    # Weight of the latest batch in the overlap count: after a busy spell of two replicas, the
    # third lone batch gets every core again (2 -> 1.5 -> 1.25, which rounds to 1).
    OVERLAP_SMOOTHING = 0.5

    def __init__(self) -> None:
        self.seconds_per_input: dict[int, float] = {}
        self._batches = 0
        self._overlap = 1.0

    def choose(self, allowed: int) -> int:
        """Threads for the next batch, at most ``allowed``."""
        if allowed <= 1:
            return 1
        self._batches += 1
        many, one = self.seconds_per_input.get(allowed), self.seconds_per_input.get(1)
        best = 1 if many is not None and one is not None and one < many else allowed
        if self._batches % self.EXPLORE_EVERY == 0:
            return 1 if best == allowed else allowed
        return best

    def sharers(self, busy_now: int) -> int:
        """Replicas to share the cores with for the next batch: those busy now, or as many as
        have kept overlapping this replica's recent batches, whichever is more."""
        return max(busy_now, round(self._overlap))

    def saw_busy(self, peak: int) -> None:
        """The most replicas (this one included) seen busy during the batch that just ended."""
        self._overlap += self.OVERLAP_SMOOTHING * (peak - self._overlap)

    def record(self, threads: int, seconds: float, inputs: int) -> None:
        """What a batch of ``inputs`` took with ``threads``."""
        sample = seconds / max(1, inputs)
        previous = self.seconds_per_input.get(threads)
        self.seconds_per_input[threads] = (
            sample if previous is None else previous + self.SMOOTHING * (sample - previous)
        )


class InferenceExecutor:
    """Runs the model's calls on one dedicated thread, in order.

    ``fixed_threads`` pins intra-op threads (a spec's ``torch_threads``, or 1 for GPU models
    whose CPU side is light); ``None`` shares the machine's cores among busy replicas.
    """

    def __init__(self, name: str, fixed_threads: int | None = None, busy: BusyReplicas | None = None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"inference-{name}")
        self.fixed_threads = fixed_threads
        self.cores = machine_cores()
        self._busy = busy if fixed_threads is None else None
        if fixed_threads is None and self._busy is None:
            self._busy = BusyReplicas()
        self.last_threads = 0
        self.chooser = ThreadChooser()

    def pin_threads(self, threads: int) -> None:
        """Use ``threads`` for every batch from now on, whatever the machine's load."""
        self.fixed_threads, self._busy = threads, None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the inference thread and wait (model load and warm-up)."""
        try:
            return self._pool.submit(self._with_threads, fn, args, self.fixed_threads or self.cores).result()
        finally:
            self.last_threads = 0  # fn may have set torch's threads itself (a spec's torch_threads)

    async def call_async(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`call` without blocking the event loop: a pool replica loads models while it
        serves others (the load waits for the running batch; batches wait for the load)."""
        try:
            future = self._pool.submit(self._with_threads, fn, args, self.fixed_threads or self.cores)
            return await asyncio.wrap_future(future)
        finally:
            self.last_threads = 0  # fn may have set torch's threads itself (a spec's torch_threads)

    async def run_batch(self, fn: Callable[..., T], *args: Any, inputs: int) -> T:
        """Run one batch of ``inputs`` on the inference thread with the threads the machine's
        load allows. ``inputs`` is required: the thread choice compares seconds per input, so a
        batch counted as one input would look slower the larger it is."""
        return await asyncio.wrap_future(self._pool.submit(self._batch, fn, args, inputs))

    def _batch(self, fn: Callable[..., T], args: tuple, inputs: int) -> T:
        if self._busy is None:
            return self._with_threads(fn, args, self.fixed_threads or 1)
        with self._busy.busy() as busy:
            threads = self.chooser.choose(max(1, self.cores // max(1, self.chooser.sharers(busy))))
            started = time.perf_counter()
            try:
                result = self._with_threads(fn, args, threads)
            finally:
                # Whoever is busy as this batch ends overlapped it (counted before the marker goes).
                self.chooser.saw_busy(max(busy, self._busy.count()))
            self.chooser.record(threads, time.perf_counter() - started, inputs)
            return result

    def _with_threads(self, fn: Callable[..., T], args: tuple, threads: int) -> T:
        if threads != self.last_threads:
            import torch

            # Process-wide in ATen, so only this thread ever sets it.
            torch.set_num_threads(threads)
            self.last_threads = threads
        return fn(*args)

    def shutdown(self) -> None:
        """Stop the thread once the running batch is done."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def decode_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """Threads that decode requests (Pillow releases the GIL while it decodes and resizes).

    Bounded per replica, so a request carrying many inputs cannot hold more than ``workers``
    decoded images' worth of decoder memory at once.
    """
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode")
