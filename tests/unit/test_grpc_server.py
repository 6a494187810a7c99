"""The ingress's gRPC listener on its own: a taken port is named, not shared; no Ray."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from deployments.inference.grpc_server import GrpcServer
from deployments.inference.http_server import PortInUseError


def test_a_taken_port_names_its_holder_instead_of_sharing_it() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a sharing-friendly holder
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = GrpcServer([], "127.0.0.1", port, max_body_bytes=1024, reuse_port=False)
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}: the port is taken by pid {os.getpid()}"):
            asyncio.run(server.start())


def test_start_and_stop_free_the_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def cycle() -> None:
        server = GrpcServer([], "127.0.0.1", port, max_body_bytes=1024, reuse_port=False)
        await server.start()
        await server.stop(grace_s=0)

    asyncio.run(cycle())
    asyncio.run(cycle())  # the port is free again
