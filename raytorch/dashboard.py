"""Opening the Ray dashboard in one step, without weakening its token authentication.

Ray 2.60 turns token authentication on for new local clusters, so the dashboard opens on an
"Authentication Token Required" prompt. The token is the one ``ray get-auth-token`` prints
(``~/.ray/auth_token`` unless ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` say otherwise);
pasting it makes the dashboard set an HttpOnly ``ray-authentication-token`` cookie.

``SignInLink`` does that paste for the user. It serves one random link on 127.0.0.1 that, the
first time it is opened before it expires, calls the dashboard's ``POST /api/authenticate``
itself, hands the cookie the dashboard answers with to the browser and redirects to the Serve
tab. Cookies belong to a host, not a port, so a cookie set by the link's port reaches the
dashboard's. The token never appears in the link, on the console or in a log; the link works
once, expires after ``LINK_TTL_S``, and is reachable from this machine only, like the dashboard.
Each connection gets its own thread and at most ``CONNECTION_DEADLINE_S``, and when the link is
used or expires every connection still open is ended: a slow client can neither hold up the
browser's sign-in nor keep the link alive past its deadline.

    python -m raytorch.dashboard --dashboard-port 8265     # a new link for a running server
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import secrets
import selectors
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from raytorch.dashboard_api import (
    SERVE_TAB,
    DashboardError,
    authenticate,
    dashboard_url,
    ray_token,
    token_auth_enabled,
    wait_for_serve,
)

LINK_TTL_S = 600.0
CONNECTION_DEADLINE_S = 10.0  # a sign-in is one short request
MAX_CONNECTIONS = 16


class _LinkHandler(http.server.BaseHTTPRequestHandler):
    server: _LinkServer
    # Each read or write of a connection waits at most this long...
    timeout = 2.0

    def setup(self) -> None:
        super().setup()
        # ... and a whole connection lasts at most CONNECTION_DEADLINE_S, however slowly its
        # client trickles bytes in (each byte would restart the per-read timeout).
        self._deadline = threading.Timer(CONNECTION_DEADLINE_S, _shut, (self.connection,))
        self._deadline.daemon = True
        self._deadline.start()

    def finish(self) -> None:
        self._deadline.cancel()
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        link = self.server.link
        # The path is the secret: compare it in constant time.
        if not secrets.compare_digest(self.path.encode("utf-8", "replace"), link.path.encode()):
            self._reply(404, "Not found.\n")
            return
        with link.lock:  # one sign-in at a time: the link works once, whoever opens it
            if link.used or link.expired:
                self._reply(410, f"This sign-in link was used or has expired.\n{link.help_text()}\n")
                return
            try:
                cookies = authenticate(link.dashboard, link.token)
            except DashboardError as exc:  # the link stays usable: the dashboard may still be starting
                self._reply(502, f"The dashboard did not sign you in: {exc}.\n{link.help_text()}\n")
                return
            link.used = True
        self.close_connection = True
        self.send_response(303)
        self.send_header("Location", link.dashboard + SERVE_TAB)
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Length", "0")
        self.end_headers()
        link.finished(self.connection)

    def _reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a request line would print the link's secret."""


def _shut(connection: socket.socket) -> None:
    """End a connection now: its handler's next read or write fails, and its thread ends."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _LinkServer(http.server.ThreadingHTTPServer):
    """One thread per connection (a slow client never holds up the others), at most
    ``MAX_CONNECTIONS`` at once; the open ones are known, so the link can end them all."""

    link: SignInLink
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._connections_lock:
            if len(self.connections) >= MAX_CONNECTIONS:
                return False  # closed at once; a browser opens only a few
            self.connections.add(request)
            return True

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Silent: a client that left or was cut off is nothing to report (and a traceback
        could show the link's secret path)."""

    def end_connections(self, keep: socket.socket | None = None) -> None:
        """Shut every open connection but ``keep`` (its answer is on its way)."""
        with self._connections_lock:
            open_now = [c for c in self.connections if c is not keep]
        for connection in open_now:
            _shut(connection)


class SignInLink:
    """A one-time, expiring link on 127.0.0.1 that signs a browser in to the dashboard.

    Takes the dashboard's URL and the cluster's token. ``url`` is what to open; ``serve()``
    answers requests until the link has been used or has expired, then closes its port.
    """

    def __init__(self, dashboard: str, token: str, ttl_s: float = LINK_TTL_S) -> None:
        self.dashboard = dashboard.rstrip("/")
        self.token = token
        self.path = "/" + secrets.token_urlsafe(32)
        self.deadline = time.monotonic() + ttl_s
        self.ttl_s = ttl_s
        self.used = False
        self.lock = threading.Lock()
        # Port 0: the kernel picks a free one, so two servers on one machine never collide.
        self._server = _LinkServer(("127.0.0.1", 0), _LinkHandler)
        self._server.link = self
        self.url = f"http://127.0.0.1:{self._server.server_port}{self.path}"
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._last_answer: socket.socket | None = None

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def help_text(self) -> str:
        """What to do without a working link."""
        return (
            f"For a new link: {_here('python')} -m raytorch.dashboard --dashboard-port "
            f"{self.dashboard.rsplit(':', 1)[-1]}; or paste the output of {_here('ray')} "
            "get-auth-token into the dashboard's prompt."
        )

    def finished(self, connection: socket.socket) -> None:
        """The link was used (its answer sent on ``connection``): stop serving now."""
        self._last_answer = connection
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def serve(self) -> bool:
        """Answer requests (each connection in its own thread) until the link is used (True)
        or expires (False); then stop listening and end every connection still open, so
        nothing outlives the link's deadline."""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._server, selectors.EVENT_READ)
                selector.register(self._wake_reader, selectors.EVENT_READ)
                while not self.used and not self.expired:
                    # Blocks until a connection, the link's use or its deadline: no idle wake-ups.
                    ready = selector.select(max(self.deadline - time.monotonic(), 0.01))
                    if any(key.fileobj is self._server for key, _ in ready):
                        self._server.timeout = 0
                        self._server.handle_request()  # hands the connection to a thread
            return self.used
        finally:
            self.close()

    def close(self) -> None:
        """Stop listening and end open connections (``serve()`` closes by itself)."""
        self._server.server_close()
        self._server.end_connections(keep=self._last_answer)
        self._wake_reader.close()
        self._wake_writer.close()

    def start(self) -> threading.Thread:
        """``serve()`` in a daemon thread."""
        thread = threading.Thread(target=self.serve, name="dashboard-sign-in", daemon=True)
        thread.start()
        return thread


def _here(tool: str) -> str:
    """``tool`` from this interpreter's environment, as the user would type it from here."""
    path = Path(sys.executable).parent / tool
    if not path.exists():
        return tool
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def banner(dashboard: str, link: SignInLink | None, token_auth: bool = True) -> str:
    """The console lines that say how to open the dashboard (never the token itself)."""
    lines = [f"Ray dashboard: {dashboard}{SERVE_TAB}  (Serve tab: every model version, its replicas, logs)"]
    if link is not None:
        minutes = round(link.ttl_s / 60)
        lines.append(f"  sign this machine's browser in (one use, {minutes} min): {link.url}")
    if token_auth:
        lines.append(f"  or paste the token `{_here('ray')} get-auth-token` prints into its prompt")
    return "\n".join(lines)


def announce(dashboard_port: int, also: tuple[str, ...] = (), wait: bool = True) -> SignInLink | None:
    """What the launcher calls once Ray is up: print the banner and serve a sign-in link.

    Runs in a daemon thread (waiting for Serve's applications first when ``wait``); ``also``
    are lines printed under the banner. Returns the link, or None when token authentication
    is off or there is no token.
    """
    dashboard = dashboard_url(dashboard_port)
    try:
        token_auth = token_auth_enabled(dashboard)
    except DashboardError:
        token_auth = True  # say how to sign in anyway
    token = ray_token() if token_auth else None
    link = SignInLink(dashboard, token) if token else None

    def run() -> None:
        if wait:
            wait_for_serve(dashboard, token)
        print("\n".join([banner(dashboard, link, token_auth), *also]), flush=True)
        if link is not None:
            link.serve()

    threading.Thread(target=run, name="dashboard-sign-in", daemon=True).start()
    return link


def main(argv: list[str] | None = None) -> int:
    """Print a fresh sign-in link for a running dashboard and serve it until used or expired."""
    parser = argparse.ArgumentParser(
        prog="python -m raytorch.dashboard", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dashboard-port", type=int, default=8265, help="the dashboard's port on 127.0.0.1")
    parser.add_argument("--ttl-s", type=float, default=LINK_TTL_S, help="seconds before the link expires")
    args = parser.parse_args(argv)
    dashboard = dashboard_url(args.dashboard_port)
    try:
        token_auth = token_auth_enabled(dashboard)
    except DashboardError as exc:
        print(f"No Ray dashboard at {dashboard}: {exc}", file=sys.stderr)
        return 1
    token = ray_token() if token_auth else None
    link = SignInLink(dashboard, token, args.ttl_s) if token else None
    print(banner(dashboard, link, token_auth), flush=True)
    if link is None:
        return 0
    used = link.serve()
    print("Signed in." if used else "The link expired unused.", flush=True)
    return 0 if used else 1


if __name__ == "__main__":
    sys.exit(main())
