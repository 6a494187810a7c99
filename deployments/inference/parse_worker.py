"""Big JSON bodies parsed in a child process, so no parse holds the ingress's interpreter.

A thread does not help a JSON parse: ``json.loads`` (and numpy turning the lists into an
array) run in C without ever releasing Python's interpreter lock, so 20 MB of numbers would
hold the event loop, ``/ping`` included, for a second. The parsers named in :data:`PARSERS`
therefore run here, in one child process started on first use (``python -m`` this module) and
again after it dies, one parse at a time. The request goes over the child's stdin and the
parsed request comes back on its stdout, both pickled: what comes back is compact (numeric
tensors as raw bytes, at most 64 ``BYTES`` elements), so reading it costs the loop
microseconds. Errors come back as the same exceptions (a :class:`BadInputError` stays a 400).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pickle
import struct
import sys
import weakref
from typing import Any

# "module:function" of each parser the child may run (nothing else is ever called there).
PARSERS = frozenset(
    {
        "deployments.inference.oip_codec:parse_request",
        "deployments.inference.kserve_v1:parse_instances",
    }
)
_FRAME = struct.Struct("<Q")


class ParseWorker:
    """One child process parsing one body at a time (see the module docstring)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def parse(self, parser: str, *args: Any) -> Any:
        """``parser(*args)`` in the child; raises what it raised."""
        payload = pickle.dumps((parser, args), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._lock:
            process = await self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(_FRAME.pack(len(payload)) + payload)
                await process.stdin.drain()
                (size,) = _FRAME.unpack(await process.stdout.readexactly(_FRAME.size))
                ok, value = pickle.loads(await process.stdout.readexactly(size))
            except BaseException:
                # Cancelled halfway, or the child died: its pipes are out of step, start afresh.
                self.stop()
                raise
        if ok:
            return value
        raise value

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            # The child imports what this process imports (Ray workers extend sys.path).
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        return self._process

    def stop(self) -> None:
        """End the child (the next parse starts another)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
        self._process = None


_workers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ParseWorker] = weakref.WeakKeyDictionary()


def worker() -> ParseWorker:
    """The running event loop's worker (one per loop: its lock and pipes belong to it)."""
    loop = asyncio.get_running_loop()
    if loop not in _workers:
        _workers[loop] = ParseWorker()
    return _workers[loop]


def _answer(parser: str, args: tuple) -> tuple[bool, Any]:
    if parser not in PARSERS:
        return False, ValueError(f"{parser} is not a parser of this worker")
    module, name = parser.split(":")
    try:
        return True, getattr(importlib.import_module(module), name)(*args)
    except Exception as exc:
        return False, exc


def main() -> None:
    """The child: answer each framed request on stdin with a framed answer on stdout."""
    source = sys.stdin.buffer
    sink = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (an import's warning) must not corrupt the answers
    while True:
        head = source.read(_FRAME.size)
        if len(head) < _FRAME.size:  # the ingress closed the pipe: it is gone
            return
        (size,) = _FRAME.unpack(head)
        answer = _answer(*pickle.loads(source.read(size)))
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception that does not pickle
            data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {exc}")))
        sink.write(_FRAME.pack(len(data)) + data)
        sink.flush()


if __name__ == "__main__":
    main()
