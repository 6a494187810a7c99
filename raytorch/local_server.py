"""A server on this machine for measuring it: started the way `make serve` starts one
(``python -m raytorch.launch``), on free ports and a RAY_TMPDIR of its own, stopped by its PID.

Its applications can be changed while it runs, as ``serve deploy`` does (a PUT of the whole
config to the dashboard's Serve REST API): Serve then redeploys only the applications whose
config changed, and a change of ``user_config`` alone (batch size, batch wait) reaches the
running replicas without a restart. Used by ``raytorch tune``; nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from raytorch.dashboard_api import DashboardError, dashboard_url, ray_token, token_auth_enabled

# Serve's application states that need a new deploy to change.
FAILED_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}


# Everything here is on 127.0.0.1: never through an HTTP(S)_PROXY from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(Exception):
    """The server stopped, or an application could not be deployed or answered."""


class InputRefused(ServerError):
    """The model answered a request with a client error: the input does not suit it."""


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request to 127.0.0.1: the status and body (an error status is returned, not raised;
    a connection that fails raises OSError)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _LOCAL.open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM lets the process stop its local cluster; then clear its own process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def with_local_ports(config: dict[str, Any], http_port: int, grpc_port: int) -> dict[str, Any]:
    """A copy of ``config`` serving HTTP and gRPC on these ports of 127.0.0.1."""
    out = dict(config)
    out["http_options"] = {**(config.get("http_options") or {}), "host": "127.0.0.1", "port": http_port}
    out["grpc_options"] = {**(config.get("grpc_options") or {}), "port": grpc_port}
    return out


class LocalServer:
    """One ``raytorch.launch`` process serving a config; use as a context manager.

    ``env`` is added to this process's environment; the server gets its own RAY_TMPDIR, state
    and log directories and management token, so it never touches a server already running
    here (nor restores that server's registered models).
    """

    def __init__(self, config: dict[str, Any], env: dict[str, str] | None = None, cwd: Path | None = None):
        self.workdir = Path(tempfile.mkdtemp(prefix="rtt-", dir="/tmp"))  # short: Ray's socket paths
        self.http_port, self.grpc_port = free_port(), free_port()
        self.dashboard_port, self.metrics_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.dashboard = dashboard_url(self.dashboard_port)
        self.log_path = self.workdir / "server.log"
        self._token: str | None = None
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.local(config), sort_keys=False))
        full_env = {
            **os.environ,
            "RAY_TMPDIR": str(self.workdir),
            "PYTHONUNBUFFERED": "1",
            "RAYTORCH_STATE_DIR": str(self.workdir / "state"),
            "RAYTORCH_LOG_DIR": str(self.workdir / "logs"),
            "RAYTORCH_TOKEN": secrets.token_urlsafe(24),
            **(env or {}),
        }
        full_env.pop("RAY_ADDRESS", None)  # never attach to somebody else's cluster
        command = [sys.executable, "-m", "raytorch.launch", str(config_path)]
        command += ["--metrics-port", str(self.metrics_port), "--dashboard-port", str(self.dashboard_port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=cwd or Path.cwd(),
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # stopped as one group, by this PID
            )
        self.started_at = time.monotonic()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server (only it) and remove its directory."""
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def local(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` on this server's ports."""
        return with_local_ports(config, self.http_port, self.grpc_port)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of what the server printed."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_for(self, check: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``check`` until true; the seconds since start, or ServerError with the log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError, DashboardError):
                if check():
                    return time.monotonic() - self.started_at
            time.sleep(0.5)
        raise ServerError(f"timed out after {timeout_s:g}s waiting for {what}:\n{self.log_tail()}")

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            self._token = (ray_token() or "") if token_auth_enabled(self.dashboard) else ""
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def applications(self) -> dict[str, Any]:
        """Serve's view of the applications (the dashboard's GET /api/serve/applications/)."""
        status, body = http("GET", f"{self.dashboard}/api/serve/applications/", headers=self._headers())
        if status != 200:
            raise OSError(f"the dashboard answered {status}")  # starting: wait_for retries
        return json.loads(body).get("applications") or {}

    def apply(self, config: dict[str, Any], app: str, timeout_s: float) -> float:
        """Deploy ``config`` (on this server's ports) as ``serve deploy`` would and wait until
        ``app`` runs it; the seconds that took. ServerError if Serve refuses or fails it."""
        started, since = time.monotonic(), time.time()
        self._put(config)
        self.wait_for(lambda: self._deployed(app, since), timeout_s, f"application {app} to redeploy")
        return time.monotonic() - started

    def _put(self, config: dict[str, Any]) -> None:
        url = f"{self.dashboard}/api/serve/applications/"
        headers = {**self._headers(), "Content-Type": "application/json"}
        status, body = http("PUT", url, json.dumps(self.local(config)).encode(), headers)
        if status != 200:
            raise ServerError(f"Serve refused the config ({status}): {body[:2000].decode(errors='replace')}")

    def remove(self, config: dict[str, Any], app: str, timeout_s: float) -> None:
        """Deploy ``config`` without ``app`` and wait until Serve has deleted it (its replicas
        and their CPUs freed, so a new layout never waits for the old one's resources)."""
        rest = {**config, "applications": [a for a in config["applications"] if a["name"] != app]}
        self._put(rest)
        self.wait_for(lambda: app not in self.applications(), timeout_s, f"application {app} to be deleted")

    def _deployed(self, app: str, since: float) -> bool:
        details = self.applications().get(app) or {}
        if (details.get("last_deployed_time_s") or 0) < since - 1:
            return False  # Serve still shows the previous deploy
        if details.get("status") in FAILED_STATES:
            raise ServerError(f"application {app}: {details['status']}: {details.get('message', '')[:2000]}")
        return details.get("status") == "RUNNING"

    def answers(self, path: str, body: bytes, content_type: str) -> bool:
        """Whether a PUT of ``body`` to ``path`` answers 200 (InputRefused names a 4xx answer:
        the input does not suit the model, so waiting would not help)."""
        status, answer = http("PUT", self.base_url + path, body, {"Content-Type": content_type})
        if 400 <= status < 500 and status not in (404, 408, 429):
            raise InputRefused(f"PUT {path} answered {status}: {answer[:500].decode(errors='replace')}")
        return status == 200
