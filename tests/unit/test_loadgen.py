"""The load generator against a local HTTP server: the open loop holds its rate and counts the
requests a slow server could not take, the closed loop keeps its clients busy."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from raytorch.loadgen import check_local, closed_loop, open_loop


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay_s = 0.0

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay_s)
        ok = self.headers["Content-Type"] == "text/plain"
        body = b"{}"
        self.send_response(200 if ok else 415)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-batch-size", "3")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def _serve(delay_s: float) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"delay_s": delay_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predictions/m"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fast_url() -> Iterator[str]:
    yield from _serve(0.0)


@pytest.fixture
def slow_url() -> Iterator[str]:
    yield from _serve(0.5)


def test_open_loop_sends_at_the_rate_asked(fast_url: str) -> None:
    result = open_loop(
        fast_url, b"hi", rate=40, warmup_s=0.5, duration_s=2, max_in_flight=16, content_type="text/plain"
    )
    assert result.errors == 0
    assert 70 <= result.completed <= 90  # 40/s for 2 s, give or take the window's edges
    assert result.as_dict()["rate"] == 40
    assert result.mean_batch() == 3
    assert 0 < result.percentile(99) < 500


def test_open_loop_counts_what_a_slow_server_cannot_take(slow_url: str) -> None:
    # 0.5 s per request and at most 2 in flight: about 4 answers/s of the 20/s sent.
    result = open_loop(
        slow_url, b"hi", rate=20, warmup_s=0.5, duration_s=2, max_in_flight=2, content_type="text/plain"
    )
    assert result.throughput <= 6
    assert result.error_kinds["dropped: too many in flight"] >= 20


def test_closed_loop_sends_the_content_type_and_counts_refusals(fast_url: str) -> None:
    result = closed_loop(fast_url, b"hi", concurrency=2, warmup_s=0.2, duration_s=1, content_type="image/png")
    assert result.completed == 0
    assert result.errors > 0 and set(result.error_kinds) == {"415"}


def test_only_this_machine_is_loaded() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        check_local("http://example.com/predictions/m")
    with pytest.raises(ValueError, match="above 0"):
        open_loop("http://127.0.0.1:1/", b"", rate=0, warmup_s=0, duration_s=1, max_in_flight=1)
