"""Run a real ``serve run`` in a subprocess, on its own ports and RAY_TMPDIR, for e2e tests.

The process gets its own session (process group) so that, after SIGTERM has let it stop its
local Ray cluster, anything it left behind can be killed without touching other clusters on
the machine. Never ``ray stop``: it would stop every Ray instance here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

# One way to find a port and to stop a server by its PID, shared with `raytorch tune`.
from raytorch.local_server import free_port
from raytorch.local_server import stop_process as stop

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServeCluster:
    """A running ``serve run`` and how to reach it."""

    process: subprocess.Popen
    base_url: str
    workdir: Path
    log_path: Path
    started_at: float
    grpc_target: str = ""  # host:port of the ingress's gRPC server (when its args enable it)

    def log(self) -> str:
        """Everything ``serve run`` printed so far."""
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``check`` until true; return the seconds waited or fail with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve run exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if check():
                    return time.monotonic() - self.started_at
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log()[-4000:]}")


def write_config(config: dict, port: int, directory: Path, grpc_port: int | None = None) -> Path:
    """Copy of a Serve config listening on ``port`` (HTTP) and ``grpc_port`` at 127.0.0.1."""
    config = dict(config)
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    if grpc_port is not None:
        config["grpc_options"] = {**config.get("grpc_options", {}), "port": grpc_port}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_config(name: str) -> dict:
    """A shipped config from configs/."""
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def trust_test_fixtures(config: dict) -> dict:
    """Let registered test archives name the tests' own model factories and handlers
    (``tests.fixtures``): the management app's ``trusted_modules``, as an operator would."""
    for app in config["applications"]:
        if app["import_path"].endswith(":build_management"):
            app.setdefault("args", {})["trusted_modules"] = ["handlers.zoo", "tests.fixtures"]
    return config


@contextlib.contextmanager
def serve_run(
    config: dict, extra_env: dict[str, str] | None = None, launcher_args: list[str] | None = None
) -> Iterator[ServeCluster]:
    """Start ``serve run`` on ``config`` and stop it (and only it) afterwards.

    With ``launcher_args``, start through ``python -m raytorch.launch`` (what `make serve`
    runs: Ray first, with fixed metrics/dashboard ports, then Serve's own `serve run`).
    """
    # Short path: Ray's unix sockets live under RAY_TMPDIR and have a length limit.
    workdir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    port, grpc_port = free_port(), free_port()
    config_path = write_config(config, port, workdir, grpc_port)
    log_path = workdir / "serve.log"
    env = {**os.environ, "RAY_TMPDIR": str(workdir), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)  # never attach to somebody else's cluster
    # The `serve` CLI of this interpreter's environment, whether or not it is on PATH.
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve") or "serve"
    command = [serve, "run", str(config_path)]
    if launcher_args is not None:
        command = [sys.executable, "-m", "raytorch.launch", str(config_path), *launcher_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cluster = ServeCluster(
        process, f"http://127.0.0.1:{port}", workdir, log_path, time.monotonic(), f"127.0.0.1:{grpc_port}"
    )
    try:
        yield cluster
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)
