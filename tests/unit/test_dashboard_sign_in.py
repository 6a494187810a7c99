"""The one-time dashboard sign-in link, against a stand-in for Ray's dashboard (no Ray)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from raytorch.dashboard import SignInLink, banner
from raytorch.dashboard_api import SERVE_TAB, token_auth_enabled

TOKEN = "cluster-token-1234"


class _FakeDashboard(http.server.BaseHTTPRequestHandler):
    """Ray 2.60's two public auth endpoints, answering as the real ones do."""

    def do_GET(self) -> None:
        if self.path == "/api/authentication_mode":
            self._send(200, json.dumps({"authentication_mode": "token"}).encode())
        else:
            self._send(401, b"Unauthorized")

    def do_POST(self) -> None:
        if self.path != "/api/authenticate":
            self._send(404, b"")
        elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(403, b"Forbidden: Invalid authentication token")
        else:
            cookie = f"ray-authentication-token={TOKEN}; HttpOnly; Max-Age=2592000; Path=/; SameSite=Strict"
            self._send(200, b'{"status": "authenticated"}', cookie)

    def _send(self, status: int, body: bytes, cookie: str | None = None) -> None:
        self.send_response(status)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeDashboard)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_link_sets_the_dashboards_cookie_once_then_closes(dashboard: str) -> None:
    link = SignInLink(dashboard, TOKEN)
    assert link.url.startswith("http://127.0.0.1:") and TOKEN not in link.url
    thread = link.start()

    answer = httpx.get(link.url, follow_redirects=False, timeout=5)
    assert answer.status_code == 303
    assert answer.headers["location"] == dashboard + SERVE_TAB
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"ray-authentication-token={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert answer.headers["cache-control"] == "no-store"

    thread.join(timeout=5)
    assert not thread.is_alive()
    with pytest.raises(httpx.ConnectError):  # used: its port is closed
        httpx.get(link.url, timeout=5)


def test_wrong_paths_do_not_use_the_link(dashboard: str) -> None:
    link = SignInLink(dashboard, TOKEN)
    thread = link.start()
    for guess in ("/", "/favicon.ico", link.path[:-1], link.path + "x"):
        answer = httpx.get(link.url.replace(link.path, guess), follow_redirects=False, timeout=5)
        assert answer.status_code == 404
        assert "set-cookie" not in answer.headers
    assert httpx.get(link.url, follow_redirects=False, timeout=5).status_code == 303
    thread.join(timeout=5)


def test_a_refused_token_leaves_the_link_usable_and_says_what_to_do(dashboard: str) -> None:
    link = SignInLink(dashboard, "stale-token")
    link.start()
    answer = httpx.get(link.url, follow_redirects=False, timeout=5)
    assert answer.status_code == 502
    assert "403" in answer.text and "get-auth-token" in answer.text
    assert "stale-token" not in answer.text and "set-cookie" not in answer.headers
    assert not link.used
    link.token = TOKEN
    assert httpx.get(link.url, follow_redirects=False, timeout=5).status_code == 303


def test_an_unused_link_expires(dashboard: str) -> None:
    link = SignInLink(dashboard, TOKEN, ttl_s=0.3)
    assert link.serve() is False
    with pytest.raises(httpx.ConnectError):
        httpx.get(link.url, timeout=5)


def test_requests_are_not_logged(dashboard: str, capfd: pytest.CaptureFixture[str]) -> None:
    link = SignInLink(dashboard, TOKEN)
    thread = link.start()
    httpx.get(link.url, follow_redirects=False, timeout=5)
    thread.join(timeout=5)
    out, err = capfd.readouterr()
    assert link.path not in out + err and TOKEN not in out + err


def test_banner_shows_the_way_in_but_never_the_token(dashboard: str) -> None:
    link = SignInLink(dashboard, TOKEN)
    text = banner(dashboard, link)
    assert dashboard + SERVE_TAB in text and link.url in text
    assert "get-auth-token" in text and "10 min" in text
    assert TOKEN not in text
    link.close()
    assert banner(dashboard, None, token_auth=False).splitlines() == [
        f"Ray dashboard: {dashboard}{SERVE_TAB}  (Serve tab: every model version, its replicas, logs)"
    ]


def test_token_mode_is_read_from_the_dashboard(dashboard: str) -> None:
    assert token_auth_enabled(dashboard) is True


def _trickle(address: tuple[str, int], stop: threading.Event) -> threading.Thread:
    """A client that sends one byte of a request now and then, never finishing it."""

    def run() -> None:
        with socket.create_connection(address, timeout=5) as sock:
            for byte in b"GET /" + b"a" * 200:
                if stop.is_set():
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.3)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_slow_client_does_not_hold_up_the_sign_in(dashboard: str) -> None:
    """Issue 24: the link's server answered one client at a time."""
    link = SignInLink(dashboard, TOKEN)
    thread = link.start()
    stop = threading.Event()
    address = ("127.0.0.1", int(link.url.split(":")[2].split("/")[0]))
    _trickle(address, stop)
    time.sleep(0.3)
    try:
        began = time.monotonic()
        answer = httpx.get(link.url, follow_redirects=False, timeout=10)
        assert answer.status_code == 303
        assert time.monotonic() - began < 1.5
    finally:
        stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_the_link_expires_on_time_even_while_a_client_trickles_bytes(dashboard: str) -> None:
    """Issue 24: expiry was checked only between requests, so a slow client kept it open."""
    link = SignInLink(dashboard, TOKEN, ttl_s=1.0)
    address = ("127.0.0.1", int(link.url.split(":")[2].split("/")[0]))
    stop = threading.Event()
    done: list[bool] = []
    server = threading.Thread(target=lambda: done.append(link.serve()), daemon=True)
    server.start()
    client = _trickle(address, stop)
    server.join(timeout=4)
    try:
        assert not server.is_alive(), "the link outlived its deadline"
        assert done == [False]
        client.join(timeout=3)
        assert not client.is_alive(), "the slow connection was left open"
    finally:
        stop.set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(link.url, timeout=5)
