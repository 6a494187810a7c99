"""Parsing that can take long runs beside the ingress's event loop, not on it.

The event loop answers every connection of the ingress (``/ping`` included); a 20 MB body
parsed on it would hold every other request for as long as the parse takes. Bodies under
:data:`OFF_LOOP_BYTES` are parsed in place (a thread hop would cost more than the parse);
bigger ones go to a small thread pool, whose size also bounds how many big bodies are parsed
at once. Parsers written in Python (splitting binary tensors, multipart, per-element checks)
then give the loop the interpreter every few milliseconds. One C call that holds the
interpreter throughout (``json.loads`` of a long list of numbers) still delays the loop by its
own duration, which is why the element counts are bounded before any such call
(:mod:`deployments.inference.oip_codec`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

OFF_LOOP_BYTES = 64 * 1024
PARSE_THREADS = 2
T = TypeVar("T")

_parsers = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="raytorch-parse")


async def parse_off_loop(size: int, parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)`` for a body of ``size`` bytes: in place when small, else on a parser
    thread (its exceptions are raised here, as in place)."""
    if size < OFF_LOOP_BYTES:
        return parse(*args)
    return await asyncio.get_running_loop().run_in_executor(_parsers, parse, *args)
