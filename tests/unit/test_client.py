"""The CLI's HTTP client keeps its bearer token to the server it was pointed at."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raytorch.client import Client


class Recorder(ThreadingHTTPServer):
    """Answers ``/redirect`` with a 307 to ``target``, anything else with JSON; records the
    Authorization header of every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.target = ""
        self.authorization: list[str | None] = []


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.authorization.append(self.headers.get("Authorization"))
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", self.server.target)
            self.end_headers()
            return
        body = json.dumps({"models": []}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    pair = (Recorder(), Recorder())
    for server in pair:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield pair
    for server in pair:
        server.shutdown()
        server.server_close()


def test_the_token_is_not_sent_on_to_a_redirect_target(servers: tuple[Recorder, Recorder]) -> None:
    ours, elsewhere = servers
    ours.target = f"http://127.0.0.1:{elsewhere.server_address[1]}/models"
    client = Client(f"http://127.0.0.1:{ours.server_address[1]}", token="t0ken-for-our-server-only")
    status, body, _ = client.request("GET", "/redirect")
    assert (status, body) == (200, {"models": []})
    assert ours.authorization == ["Bearer t0ken-for-our-server-only"]
    assert elsewhere.authorization == [None]
