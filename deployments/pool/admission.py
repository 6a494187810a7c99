"""Whether a pool replica may start a cold load now, and how much room a model needs first.

A cold load runs on the replica's one inference thread, where every batch of every model of the
replica runs too: requests alternating over more models than the replica's budget holds would
make it load on nearly every request and stall the models it holds. So cold loads are rationed
per replica (a token bucket: ``cold_load_burst`` at once, ``cold_loads_per_s`` on average, and
no more than ``cold_load_burst`` waiting for the thread). A request over the ration is answered
503 with Retry-After at once, naming the pool, and evicts nothing; the models the replica holds
keep answering. No Ray here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from handlers.errors import ModelNotReadyError

# Files whose size tells a model's size before it loads (a state_dict, TorchScript, ONNX).
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx", ".pkl")


def weights_bytes(base_dir: str | None) -> int:
    """Bytes of the weight files in a model's folder (0 when it has none): the estimate of a
    model this replica never loaded. Files may hold more than the model (a checkpoint with its
    optimizer state), so it only makes room; the size measured at load time decides."""
    if not base_dir:
        return 0
    return sum(
        p.stat().st_size for p in Path(base_dir).rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()
    )


class ColdLoadGate:
    """The cold-load ration of one replica of pool ``pool`` (see the module docstring)."""

    def __init__(
        self, pool: str, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool, self.per_s, self.burst = pool, per_s, burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.refused = 0

    def admit(self, label: str, waiting: int) -> None:
        """Take one cold load from the ration, or raise the 503 that says why not (``label``
        names the model; ``waiting``: loads started and not finished on this replica)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if waiting >= self.burst:
            reason = (
                f"{waiting} cold loads are already waiting for this replica's inference thread "
                f"(cold_load_burst={self.burst})"
            )
            retry_s = waiting / self.per_s
        elif self._tokens < 1.0:
            reason = (
                f"this replica already started the cold loads it may start now (cold_load_burst="
                f"{self.burst} at once, then cold_loads_per_s={self.per_s:g})"
            )
            retry_s = (1.0 - self._tokens) / self.per_s
        else:
            self._tokens -= 1.0
            return
        self.refused += 1
        raise ModelNotReadyError(
            f"Pool {self.pool} is saturated: {label} is not loaded on this replica, and {reason}. "
            "The models it holds keep answering; retry later, or give the pool more replicas or "
            "memory_budget_mb so that fewer requests need a cold load.",
            retry_after_s=max(1.0, math.ceil(retry_s)),
        )
