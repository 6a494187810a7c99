"""What one client may hold of the ingress's own HTTP listener (issue 24, finding 6).

The real listener (uvicorn with the ingress's limits, :func:`limited_http_server`) on a real
socket, over raw TCP where a client misbehaves: requests in progress are capped (503 with
Retry-After, health probes still answered), a body that trickles in gets 408 and its connection
closed, a connection that never completes a request head is closed, and connections are capped.
``/models`` refuses a missing token before reading the body. No Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from deployments.common.auth import check_bearer
from deployments.common.forwarding import ForwardedRequest, ForwardedResponse
from deployments.common.settings import IngressArgs
from deployments.inference.data_plane import DataPlane
from deployments.inference.http_entry import HttpEntry
from deployments.inference.listener_limits import ListenerLimits
from deployments.inference.routes import create_inference_app
from deployments.inference.telemetry import Telemetry
from tests.fixtures.inference import LocalRouter
from tests.fixtures.live_servers import live_servers

STALLED_HEAD = b"POST /predictions/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def listener(tmp_path_factory: pytest.TempPathFactory, **limits: float) -> Iterator[str]:
    logs = str(tmp_path_factory.mktemp("logs"))
    settings = IngressArgs(access_log="off", log_dir=logs, **limits)
    with live_servers(LocalRouter({}), settings) as servers:
        yield servers.http_url


def test_requests_over_max_ongoing_get_503_at_once_and_probes_still_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with listener(tmp_path_factory, max_ongoing_requests=2, body_timeout_s=30) as address:
        stalled = [connect(address) for _ in range(2)]
        for sock in stalled:
            sock.sendall(STALLED_HEAD)  # two requests in progress, waiting for their bodies
        time.sleep(0.3)
        began = time.monotonic()
        refused = httpx.put(f"http://{address}/predictions/slow", content=b"x", timeout=10)
        assert time.monotonic() - began < 2
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "max_ongoing_requests" in refused.json()["message"]
        assert httpx.get(f"http://{address}/ping", timeout=10).status_code == 200
        for sock in stalled:
            sock.close()
        time.sleep(0.3)  # the stalled requests end with their connections: slots are free again
        assert httpx.put(f"http://{address}/predictions/slow", content=b"x", timeout=10).status_code == 504


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with listener(tmp_path_factory, body_timeout_s=1.0) as address:
        sock = connect(address)
        began = time.monotonic()
        sock.sendall(STALLED_HEAD + b"x")
        for _ in range(4):  # a byte now and then: never enough to count as progress
            time.sleep(0.3)
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
        answer = read_answer(sock)
        took = time.monotonic() - began
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout_s" in answer and b"connection: close" in answer.lower()
        assert took < 5, f"the connection stayed open {took:.1f}s"


def test_a_connection_that_never_sends_a_complete_head_is_closed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with listener(tmp_path_factory, head_timeout_s=0.5) as address:
        idle, trickling = connect(address), connect(address)
        began = time.monotonic()
        for byte in b"GET /ping HTTP/1.1\r\n":  # one byte every 0.1 s, never the blank line
            with contextlib.suppress(OSError):
                trickling.sendall(bytes([byte]))
            time.sleep(0.1)
            if time.monotonic() - began > 2.5:
                break
        assert read_answer(idle) == b""  # closed without an answer
        assert read_answer(trickling) == b""
        assert time.monotonic() - began < 5
        idle.close()
        trickling.close()
        assert httpx.get(f"http://{address}/ping", timeout=10).status_code == 200


def test_connections_over_the_cap_are_answered_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    with listener(tmp_path_factory, max_connections=3) as address:
        held = [connect(address) for _ in range(3)]
        time.sleep(0.2)
        assert httpx.get(f"http://{address}/ping", timeout=10).status_code == 503
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"http://{address}/ping", timeout=10).status_code == 200


def test_models_without_the_token_is_refused_before_its_body_is_read() -> None:
    token = "management-token-1234"
    forwarded: list[ForwardedRequest] = []
    settings = IngressArgs()
    telemetry = Telemetry("off", settings.log_dir)
    router = LocalRouter({})
    plane = DataPlane(router, telemetry.metrics.in_flight)

    async def authorize(header: str | None) -> None:
        return None

    async def management(request: ForwardedRequest) -> ForwardedResponse:
        forwarded.append(request)
        return ForwardedResponse(200, [], b"{}")

    async def check_token(header: str | None) -> None:
        check_bearer(header, token)

    routes = create_inference_app(plane, telemetry, authorize, settings.max_body_bytes)
    entry = HttpEntry(
        plane, telemetry, routes, authorize, settings.max_body_bytes, management=management,
        check_management_token=check_token,
    )  # fmt: skip

    async def scenario(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
        body_read = asyncio.Event()
        sent: list[dict] = []

        async def receive() -> dict:  # a body that never comes
            body_read.set()
            await asyncio.sleep(3600)
            return {}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "POST", "path": "/models", "query_string": b"url=x.mar",
            "headers": [(b"content-length", b"20000000"), *headers], "client": ("127.0.0.1", 1),
        }  # fmt: skip
        await asyncio.wait_for(entry(scope, receive, send), 5)
        return sent[0]["status"], body_read.is_set()

    assert asyncio.run(scenario([])) == (401, False)
    assert asyncio.run(scenario([(b"authorization", b"Bearer wrong-token-5678")])) == (401, False)
    assert forwarded == []
    telemetry.access.close()


def test_after_the_body_waiting_for_a_disconnect_has_no_deadline() -> None:
    """A streamed answer listens for the client leaving with receive(): the body deadline must
    not end it once the body is complete."""
    received: list[dict] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        received.append(await receive())  # type: ignore[operator]
        received.append(await receive())  # type: ignore[operator]  # waits past the deadline

    async def scenario() -> None:
        messages = [{"type": "http.request", "body": b"x", "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.5)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        limits = ListenerLimits(app, Telemetry("off", IngressArgs().log_dir), 4, body_timeout_s=0.2)
        scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "client": None}
        await limits(scope, receive, send)

    asyncio.run(scenario())
    assert [m["type"] for m in received] == ["http.request", "http.disconnect"]
