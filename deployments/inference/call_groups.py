"""One Serve call for the inputs that arrive together for one model version.

Every Serve handle call costs CPU on both sides (routing, serialisation, the replica's request
machinery): measured about 5 ms per call in a model replica and 1 ms in the ingress, against
2-30 ms of model work per image. Inputs that arrive in the same turn of the event loop (the
requests a burst of clients sends together, the fields of one multipart request) are sent as
one ``predict_many`` call instead, split into as many groups as the version has replicas so
Serve's router can still spread them. Nothing waits for a group to fill: a request that
arrives alone leaves at once, in a group of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from handlers.errors import InferenceError

Item = tuple[Any, str | None]  # (body: bytes or a decoded tensor request, content type)
Send = Callable[[list[Item], str], Awaitable[list[Any]]]

MAX_GROUP = 64


def split(items: list[Any], parts: int, limit: int = MAX_GROUP) -> list[list[Any]]:
    """``items`` dealt into ``parts`` groups (fewer when there are fewer items), none over
    ``limit``: consecutive items go to different groups, so each replica gets a fair share."""
    count = max(1, min(len(items), max(parts, -(-len(items) // limit))))
    return [items[i::count] for i in range(count)]


class CallGrouper:
    """Groups the inputs submitted during one event-loop turn for one model version.

    ``send(items, request_id)`` makes the Serve call and returns one result per item (or
    raises, failing every item of the group: the replica answers each input's own failure as
    a result, so only a failed call, such as a lost replica, fails the group); ``replicas()``
    says how many groups to split into.
    """

    def __init__(self, send: Send, replicas: Callable[[], int]) -> None:
        self._send = send
        self._replicas = replicas
        self._pending: list[tuple[Item, str, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, body: bytes, content_type: str | None, request_id: str = "") -> Any:
        """This input's result, once its group's call answers."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after every request that is ready in this turn
        self._pending.append(((body, content_type), request_id, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        live = [entry for entry in pending if not entry[2].done()]  # cancelled meanwhile
        for group in split(live, self._replicas()):
            task = asyncio.get_running_loop().create_task(self._call(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, group: list[tuple[Item, str, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._send([item for item, _, _ in group], group[0][1])
            if len(results) != len(group):  # else some inputs would wait for an answer forever
                raise InferenceError(f"The model answered {len(results)} answers for {len(group)} inputs")
        except BaseException as exc:  # the whole group shares the call's fate
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)
