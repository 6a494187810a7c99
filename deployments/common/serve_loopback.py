"""Keeps Serve's per-replica gRPC server on 127.0.0.1 when Ray itself is loopback-only.

Ray Serve 2.60 starts an inter-deployment gRPC server in every replica, bound to ``[::]:0``
(every interface; the address is written into Serve's private replica module, named in
:mod:`deployments.common.ray_private`, and nothing configures it). On a single-node server
that serves a loopback host, `make serve` starts Ray on 127.0.0.1 only
(:data:`LOOPBACK_ONLY_ENV`, Ray's own switch for a machine that is no cluster), and this module
rewrites that one address to 127.0.0.1 in each replica process: Ray then
advertises the node as 127.0.0.1, so whoever calls the replica connects there anyway. This is
the only place that rewrites it; ``tests/unit/test_ray_private.py`` and
``tests/unit/test_serve_loopback.py`` fail loudly when a Ray upgrade moves it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from deployments.common.ray_private import REPLICA_BIND_FUNCTION, REPLICA_MODULE

# Ray's switch: with it, every Ray process of the node binds 127.0.0.1 (GCS, raylet, object
# manager, workers, dashboard agent, metrics exporter). Named for Windows and macOS, where it is
# Ray's default.
LOOPBACK_ONLY_ENV: dict[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
ALL_INTERFACES = "[::]:"


def loopback_only() -> bool:
    """Whether this process belongs to a Ray started on 127.0.0.1 only."""
    return all(os.environ.get(key) == value for key, value in LOOPBACK_ONLY_ENV.items())


def keep_replica_servers_on_loopback() -> bool:
    """In a Serve replica process of a loopback-only Ray, bind the replica's gRPC server to
    127.0.0.1 instead of every interface. True when the rewrite is in place."""
    replica = sys.modules.get(REPLICA_MODULE)
    if replica is None or not loopback_only():
        return False  # not a replica process (a driver, a test), or Ray may be reached remotely
    bind = getattr(replica, REPLICA_BIND_FUNCTION)
    if getattr(bind, "keeps_loopback", False):
        return True

    def on_loopback(server: Any, address: str) -> int:
        if address.startswith(ALL_INTERFACES):
            address = "127.0.0.1:" + address[len(ALL_INTERFACES) :]
        return bind(server, address)

    on_loopback.keeps_loopback = True  # type: ignore[attr-defined]
    setattr(replica, REPLICA_BIND_FUNCTION, on_loopback)
    return True
