"""Big JSON bodies parsed in a child process, so no parse holds the ingress's interpreter.

A thread does not help a JSON parse: ``json.loads`` (and numpy turning the lists into an
array) run in C without ever releasing Python's interpreter lock, so 20 MB of numbers would
hold the event loop, ``/ping`` included, for the whole parse. The parsers named in :data:`PARSERS`
therefore run here, in one child process, one parse at a time. The child starts (``python -m``
this module) when the first big body arrives, and again after it dies; until it has imported
its parsers, big bodies are parsed on a thread, so no request waits for it to start. The
request goes over the child's stdin and the parsed request comes back on its stdout, both
pickled: what comes back is compact (numeric tensors as raw bytes; media requests hold at
most 64 ``BYTES`` elements), so reading it costs the loop little. Errors come back as the same
exceptions (a :class:`BadInputError` stays a 400).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pickle
import struct
import sys
import weakref
from typing import Any

logger = logging.getLogger("raytorch.ingress")

# "module:function" of each parser the child may run (nothing else is ever called there).
PARSERS = frozenset(
    {
        "deployments.inference.oip_codec:parse_request",
        "deployments.inference.kserve_v1:parse_instances",
    }
)
_FRAME = struct.Struct("<Q")
_READY = b"ready"


class ParseWorker:
    """One child process parsing one body at a time (see the module docstring)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def ready(self) -> bool:
        """True when the child runs and has its parsers loaded; else start it (in the background)."""
        if self._process is not None and self._process.returncode is None and self._starting is None:
            return True
        if self._starting is None:
            self._process = None
            self._starting = asyncio.get_running_loop().create_task(self._start_in_background())
        return False

    async def _start_in_background(self) -> None:
        try:
            await self.start()
        except Exception as exc:  # big bodies keep being parsed on a thread; tried again later
            logger.warning("The JSON parser process did not start: %s", exc)

    async def start(self) -> None:
        """Start the child and wait until it has imported its parsers."""
        # The child imports what this process imports (Ray workers extend sys.path).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert process.stdout is not None
            if await process.stdout.readexactly(len(_READY)) != _READY:
                process.kill()
                raise EOFError("the parser process did not start")
            self._process = process
        finally:
            self._starting = None

    async def parse(self, parser: str, *args: Any) -> Any:
        """``parser(*args)`` in the child (which :meth:`ready` said is up); raises what it raised."""
        payload = pickle.dumps((parser, args), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._lock:
            process = self._process
            if process is None or process.returncode is not None:
                raise EOFError("the parser process is not running")
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

    def stop(self) -> None:
        """End the child (the next parse starts another)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
        self._process = None

    async def close(self) -> None:
        """End the child and wait for it (before its event loop closes)."""
        process = self._process
        self.stop()
        if process is not None:
            await process.wait()


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
    for parser in sorted(PARSERS):
        importlib.import_module(parser.split(":")[0])
    sink.write(_READY)
    sink.flush()
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
