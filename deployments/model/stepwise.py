"""Long work on the replica's inference thread, in pieces: explanations and streamed answers.

The inference thread runs one job at a time, in order (:mod:`deployments.model.executor`).
An explanation is a generator of chunks (:mod:`handlers.explain`): each chunk is its own job,
so a prediction batch submitted meanwhile runs after the current chunk instead of after the
whole explanation. A stream is one job that hands each part to the event loop as soon as the
handler produces it; once the consumer is gone (client disconnected, call cancelled) the
handler's next part raises :class:`StreamCancelled` into it, which ends it. No Ray here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from typing import Any

from deployments.model.executor import InferenceExecutor
from handlers.errors import InferenceError, RaytorchError, StreamCancelled

Emit = Callable[[Any], None]


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_DONE = object()


def _advance(steps: Generator[None, None, Any]) -> tuple[bool, Any]:
    try:
        next(steps)
    except StopIteration as finished:
        return True, finished.value
    return False, None


async def run_steps(executor: InferenceExecutor, start: Callable[[], Any]) -> Any:
    """``start()`` on the inference thread; when it returns a generator, each of its steps as
    a job of its own, then its return value. Cancelling the caller closes the generator."""
    steps = await executor.call_async(start)
    if not inspect.isgenerator(steps):
        return steps
    finished = False
    try:
        while not finished:
            finished, value = await executor.call_async(_advance, steps)
        return value
    finally:
        if not finished:  # cancelled: free what the explanation holds, on its own thread
            closing = asyncio.ensure_future(executor.call_async(steps.close))
            closing.add_done_callback(lambda task: task.exception())


async def stream_parts(executor: InferenceExecutor, produce: Callable[[Emit], None]) -> AsyncIterator[Any]:
    """Run ``produce(emit)`` on the inference thread and yield each value it emits, as it
    emits it. A failure is raised after the parts before it; closing this iterator early
    makes the producer's next ``emit`` raise :class:`StreamCancelled`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    gone = threading.Event()

    def put(value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, value)

    def emit(part: Any) -> None:
        if gone.is_set():
            raise StreamCancelled()
        put(part)

    def job() -> None:
        try:
            produce(emit)
        except StreamCancelled:
            pass
        except BaseException as exc:
            put(_Failed(exc))
        finally:
            put(_DONE)

    running = asyncio.ensure_future(executor.call_async(job))
    try:
        while True:
            part = await queue.get()
            if part is _DONE:
                return
            if isinstance(part, _Failed):
                error = part.error
                if isinstance(error, RaytorchError):
                    raise error
                raise InferenceError(f"The model failed while streaming: {type(error).__name__}: {error}")
            yield part
    finally:
        gone.set()
        running.add_done_callback(lambda task: task.cancelled() or task.exception())
