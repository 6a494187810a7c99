"""A change counter the ingresses long-poll, so routing changes reach them at once.

Each change to what the ingresses route on (a default version, a version appearing, becoming
ready or being removed, a pooled version, a traffic policy) bumps the counter, is logged with the
models it touched, and wakes every waiting poll. An ingress then asks only for the models changed
since the version it has, and takes a fresh snapshot of Serve only when a change touched Serve's
applications. Between changes an idle server makes one call per ingress per poll timeout.

The ``epoch`` changes when the management part restarts (its counter starts over): an ingress
that reports another epoch gets everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Iterable

LOG_LIMIT = 10_000  # changes remembered; an ingress further behind gets everything


class RoutingFeed:
    """A monotonically growing version number with waiters and a log of what each change touched."""

    def __init__(self, log_limit: int = LOG_LIMIT) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.version = 0
        self._changed = asyncio.Event()
        self._log: deque[tuple[int, str | None, bool]] = deque()  # (version, model or None: all, serve)
        self._log_limit = log_limit
        self._floor = 0  # changes up to this version may be missing from the log

    def announce(self, models: Iterable[str] | None = None, serve: bool = True) -> None:
        """Record a change of ``models`` (None: of anything; everything is sent again) and wake
        every waiter. ``serve``: the change touched Serve's applications."""
        self.version += 1
        for model in [None] if models is None else models:
            self._log.append((self.version, model, serve))
        while len(self._log) > self._log_limit:
            self._floor = self._log.popleft()[0]
        self._changed.set()
        self._changed = asyncio.Event()

    def announce_models(self, models: Iterable[str]) -> None:
        """Record a change of ``models`` that left Serve's applications as they were (a state
        store change: a registration recorded, a default, a policy)."""
        self.announce(models, serve=False)

    def changes_since(self, since: int, epoch: str) -> tuple[set[str] | None, bool]:
        """The models changed after version ``since`` of ``epoch`` (None: send everything), and
        whether any of those changes touched Serve's applications."""
        if epoch != self.epoch or since < self._floor:
            return None, True
        names: set[str] = set()
        serve = False
        for version, model, touched in reversed(self._log):
            if version <= since:
                break
            serve = serve or touched
            if model is None:
                return None, True
            names.add(model)
        return names, serve

    async def wait_past(self, since: int, timeout_s: float, epoch: str | None = None) -> int:
        """Return the version once it differs from ``since`` (at once for another ``epoch``), or
        after ``timeout_s`` anyway."""
        if self.version == since and (epoch is None or epoch == self.epoch):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.version
