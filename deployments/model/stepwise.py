"""Long work on the replica's inference thread, in pieces: explanations and streamed answers.

The inference thread runs one job at a time, in order (:mod:`deployments.model.executor`).
An explanation is a generator of chunks (:mod:`handlers.explain`): each chunk is its own job,
so a prediction batch submitted meanwhile runs after the current chunk instead of after the
whole explanation. A stream is one job that hands each part to the event loop as soon as the
handler produces it; once the consumer is gone (client disconnected, call cancelled) the
handler's next part raises :class:`StreamCancelled` into it, which ends it.
:func:`explain_one` and :func:`stream_one` are what a dedicated and a pooled model's replica
run for one input. No Ray here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any

from deployments.common.messages import Answer, Rejected
from deployments.model.executor import InferenceExecutor
from handlers.errors import InferenceError, RaytorchError, StreamCancelled
from handlers.explain_request import ExplainRequest

logger = logging.getLogger("ray.serve")

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


async def explain_one(
    handler: Any,
    executor: InferenceExecutor,
    decoders: Executor,
    gate: asyncio.Semaphore,
    body: bytes,
    content_type: str | None,
    request: ExplainRequest,
) -> Answer | Rejected:
    """One input's explanation by ``handler`` (a dedicated or a pooled model's): decoded on
    ``decoders``, then computed chunk by chunk on the inference thread once ``gate`` lets it
    in. Failures are answered, never raised: each input of a call stands alone."""
    started = time.perf_counter()
    try:
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(decoders, handler.explain_input, body, content_type)
        async with gate:
            queued = time.perf_counter()
            result = await run_steps(executor, partial(handler.explain, item, request))
    except RaytorchError as exc:
        return Rejected(exc)
    except Exception as exc:
        logger.exception("Explanation of model %s failed", handler.spec.name)
        return Rejected(InferenceError(f"Model {handler.spec.name} failed to explain: {exc}"))
    timings = {"preprocess_s": queued - started, "inference_s": time.perf_counter() - queued}
    return Answer(result, 1, timings=timings, load_seconds=handler.load_seconds)


async def stream_one(
    handler: Any, executor: InferenceExecutor, decoders: Executor, body: bytes, content_type: str | None
) -> AsyncIterator[Any]:
    """``handler``'s partial answers to one input as they come; bad input or a failure
    midway ends them with a :class:`Rejected` part."""
    try:
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(decoders, handler.preprocess, body, content_type)
        async for part in stream_parts(executor, partial(handler.stream_into, item)):
            yield part
    except RaytorchError as exc:
        yield Rejected(exc)
