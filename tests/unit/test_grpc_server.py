"""The ingress's gRPC listener on its own: a taken port is named, not shared; no Ray."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import grpc
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


def test_calls_over_the_concurrency_limit_are_refused_at_once() -> None:
    """Issue 24: the ingress's gRPC server caps calls in progress (its max_ongoing_requests)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> tuple[grpc.StatusCode, float]:
        release = asyncio.Event()

        async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await release.wait()
            return b"done"

        handler = grpc.method_handlers_generic_handler(
            "t.Slow", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
        )
        server = GrpcServer([handler], "127.0.0.1", port, 1024, reuse_port=False, max_concurrent_rpcs=2)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/t.Slow/Wait")
                held = [asyncio.ensure_future(call(b"", timeout=10)) for _ in range(2)]
                await asyncio.sleep(0.3)
                began = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(b"", timeout=10)
                took = time.monotonic() - began
                release.set()
                assert await asyncio.gather(*held) == [b"done", b"done"]
                return refused.value.code(), took
        finally:
            await server.stop(grace_s=0)

    code, took = asyncio.run(scenario())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert took < 2
