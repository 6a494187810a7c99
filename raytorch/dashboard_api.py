"""The few calls raytorch makes to the Ray dashboard's HTTP API, on 127.0.0.1: whether it asks
for a token, signing a token in (the cookie it sets), and waiting for Serve's applications to
settle. Used by the sign-in link (:mod:`raytorch.dashboard`) and the measuring server
(:mod:`raytorch.local_server`).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from deployments.common.ray_private import ray_auth_token

COOKIE_NAME = "ray-authentication-token"
SERVE_TAB = "/#/serve"
# Serve's application states that no longer change without a new deploy.
SETTLED_STATES = {"RUNNING", "DEPLOY_FAILED", "UNHEALTHY"}
# Everything here is on 127.0.0.1: never through an HTTP(S)_PROXY from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DashboardError(Exception):
    """The dashboard could not be reached or refused the token."""


def dashboard_url(port: int) -> str:
    """The dashboard's address; `make serve` binds it to 127.0.0.1."""
    return f"http://127.0.0.1:{port}"


def _call(
    url: str, token: str | None = None, method: str = "GET", timeout_s: float = 5.0
) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        return _LOCAL.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        raise DashboardError(f"{method} {url} answered {exc.code}") from None
    except OSError as exc:
        raise DashboardError(f"{method} {url} failed: {exc}") from None


def token_auth_enabled(dashboard: str) -> bool:
    """Whether the dashboard asks for a token (its public ``/api/authentication_mode``)."""
    with _call(f"{dashboard}/api/authentication_mode") as response:
        return json.load(response).get("authentication_mode") == "token"


def ray_token() -> str | None:
    """The token a local cluster uses: the one ``ray get-auth-token`` prints, if any."""
    return ray_auth_token()


def authenticate(dashboard: str, token: str) -> list[str]:
    """The dashboard's own ``Set-Cookie`` header(s) for ``token`` (``POST /api/authenticate``)."""
    with _call(f"{dashboard}/api/authenticate", token, method="POST") as response:
        cookies = [c for c in response.headers.get_all("Set-Cookie") or [] if c.startswith(COOKIE_NAME)]
    if not cookies:
        raise DashboardError("the dashboard accepted the token but set no cookie")
    return cookies


def wait_for_serve(dashboard: str, token: str | None, timeout_s: float = 120.0) -> None:
    """Return once every Serve application has settled (or after ``timeout_s``).

    So that the sign-in banner is the last thing on the console, not lost above start-up logs.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with _call(f"{dashboard}/api/serve/applications/", token) as response:
                apps = json.load(response).get("applications") or {}
            if apps and all(app.get("status") in SETTLED_STATES for app in apps.values()):
                return
        except (DashboardError, ValueError):
            pass
        time.sleep(2.0)
