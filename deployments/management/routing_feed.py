"""A change counter the ingresses long-poll, so routing changes reach them at once.

Each change to what the ingresses route on (a default version, a version appearing, becoming
ready or being removed) bumps the counter and wakes every waiting poll; an ingress then takes
one fresh snapshot of Serve. Between changes an idle server makes one call per ingress per
poll timeout, instead of polling Serve every second.
"""

from __future__ import annotations

import asyncio
import contextlib


class RoutingFeed:
    """A monotonically growing version number with waiters."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()

    def announce(self) -> None:
        """Record a change and wake every waiter."""
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, since: int, timeout_s: float) -> int:
        """Return the version once it differs from ``since``, or after ``timeout_s`` anyway."""
        if self.version == since:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.version
