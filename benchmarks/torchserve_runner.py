"""TorchServe 0.12 as the comparison: ``.mar`` archives of the same models and weights, started
on ports of its own with its default setting or the best one found (2 workers, one OpenMP
thread each), stopped by its process group.

``torchserve --stop`` is not used: it finds the server through a PID file shared by every
TorchServe on the machine. ``--foreground`` plus a process group of our own stops only ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import torchvision

from tests.e2e.serve_cluster import free_port, stop

BIN = Path(sys.executable).parent

# The torchvision builders' architectures as plain classes, for TorchServe's eager mode
# (`--model-file`): same modules, so the same state_dict loads.
MODEL_FILES = {
    "resnet18": (
        "from torchvision.models.resnet import BasicBlock, ResNet\n\n\n"
        "class ResNet18(ResNet):\n    def __init__(self):\n"
        "        super().__init__(BasicBlock, [2, 2, 2, 2])\n"
    ),
    "densenet161": (
        "from torchvision.models.densenet import DenseNet\n\n\n"
        "class DenseNet161(DenseNet):\n    def __init__(self):\n"
        "        super().__init__(48, (6, 12, 36, 24), 96)\n"
    ),
}

# name -> (extra config.properties lines, environment of the server and its workers)
SETTINGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "best": (["default_workers_per_model=2"], {"OMP_NUM_THREADS": "1"}),
}


def save_weights(model: str, path: Path) -> Path:
    """Random-init weights (seeded) saved once, served by both systems."""
    if not path.exists():
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, model)(weights=None).state_dict(), path)
    return path


def build_mar(model: str, weights: Path, store: Path, work: Path) -> str:
    """``<model>.mar`` in ``store``, built by the real torch-model-archiver with TorchServe's
    stock ``image_classifier`` handler; returns the archive's file name."""
    work.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    if not (store / f"{model}.mar").exists():
        (work / "model.py").write_text(MODEL_FILES[model])
        archiver = shutil.which("torch-model-archiver", path=str(BIN)) or "torch-model-archiver"
        subprocess.run(
            [archiver, "--model-name", model, "--version", "1.0", "--model-file", "model.py",
             "--serialized-file", str(weights), "--handler", "image_classifier",
             "--export-path", str(store)],
            cwd=work, check=True, timeout=600,
        )  # fmt: skip
    return f"{model}.mar"


@dataclass
class TorchServe:
    """A running TorchServe and how to reach it."""

    process: subprocess.Popen
    inference_url: str
    marker: str  # KEY=value in the environment of every process of this server
    log_path: Path


def java_version() -> str | None:
    """The first line of ``java -version``, or None when Java is missing."""
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stderr or out.stdout).splitlines()[0] if out.returncode == 0 else None


@contextlib.contextmanager
def torchserve(
    store: Path,
    mar: str,
    model: str,
    setting: str,
    work: Path,
    also: tuple[str, ...] = (),
    lines: tuple[str, ...] = (),
) -> Iterator[TorchServe]:
    """Start TorchServe serving ``mar`` as ``model`` with ``setting``; stop it afterwards.
    ``also``: more ``name=file.mar`` models to start with; ``lines``: more config.properties lines."""
    work.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(3)]
    setting_lines, extra_env = SETTINGS[setting]
    config = work / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{ports[0]}",
                f"management_address=http://127.0.0.1:{ports[1]}",
                f"metrics_address=http://127.0.0.1:{ports[2]}",
                "disable_token_authorization=true",
                *setting_lines,
                *lines,
            ]
        )
        + "\n"
    )
    marker = f"RAYTORCH_BENCH_STACK={work}"
    env = {**os.environ, "RAYTORCH_BENCH_STACK": str(work), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.update(extra_env)
    log_path = work / "torchserve.log"
    command = [
        str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
        "--ts-config", str(config), "--model-store", str(store), "--models", f"{model}={mar}", *also,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        yield TorchServe(process, f"http://127.0.0.1:{ports[0]}", marker, log_path)
    finally:
        # SIGTERM, then SIGKILL of the process group: its Python workers stay in it.
        stop(process)


def wait_first_prediction(server: TorchServe, model: str, image: bytes, timeout: float) -> float:
    """Seconds until ``model`` first answers 200 (from now)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(f"TorchServe exited:\n{server.log_path.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            url = f"{server.inference_url}/predictions/{model}"
            if httpx.put(url, content=image, timeout=30).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.5)
    raise RuntimeError(f"TorchServe did not answer within {timeout}s:\n{server.log_path.read_text()[-3000:]}")
