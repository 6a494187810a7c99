"""Parsing that can take long runs beside the ingress's event loop, not on it.

The event loop answers every connection of the ingress (``/ping`` included); a 20 MB body
parsed on it would hold every other request for as long as the parse takes. Bodies under
:data:`OFF_LOOP_BYTES` are parsed in place (a thread hop would cost more than the parse).
Bigger ones go to a small thread pool, whose size also bounds how many are parsed at once:
parsers written in Python (splitting binary tensors, multipart, per-element checks) give the
loop the interpreter every few milliseconds there. A JSON parse does not (``json.loads`` runs
in C holding the interpreter throughout), so JSON bodies from :data:`PROCESS_BYTES` on are
parsed in a child process (:mod:`deployments.inference.parse_worker`) once it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from deployments.inference.parse_worker import PARSERS, worker

OFF_LOOP_BYTES = 64 * 1024
# Below it, json.loads on a thread holds the loop for a few tens of milliseconds at most.
PROCESS_BYTES = 512 * 1024
PARSE_THREADS = 2
T = TypeVar("T")
logger = logging.getLogger("raytorch.ingress")

_parsers = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="raytorch-parse")


async def parse_off_loop(size: int, parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)`` for a body of ``size`` bytes: in place when small, in the parser child
    when big and ``parse`` is one of its parsers, else on a parser thread. Its exceptions are
    raised here, as in place."""
    if size < OFF_LOOP_BYTES:
        return parse(*args)
    name = f"{parse.__module__}:{parse.__qualname__}"
    if size >= PROCESS_BYTES and name in PARSERS and worker().ready():
        try:
            return await worker().parse(name, *args)
        except (OSError, EOFError) as exc:  # the child died (IncompleteReadError is an EOFError)
            logger.warning("The parser process failed (%s); parsing on a thread instead", exc)
    return await asyncio.get_running_loop().run_in_executor(_parsers, parse, *args)
