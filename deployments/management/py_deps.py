"""Per-model Python packages (TorchServe's ``install_py_dep_per_model``), installed for real.

Registering an archive with a requirements file runs ``pip install --target`` once into a
folder of the state directory named by a hash of what is installed (the requirements' text and
the bytes of every file of the archive they name), so registering the same requirements again,
or restarting, installs nothing. The model's replicas get that folder first on their
``PYTHONPATH`` (:func:`deployments.model.builder.actor_options`); the server and every other
model never see it. Ray's ``runtime_env`` ``pip`` would instead build a virtualenv per package
list that clones the server's whole environment (gigabytes with torch), at replica start.

pip runs in its own process group with a deadline: a hung install is killed and the
registration fails with 504; a failed one fails with 400 quoting pip's error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from handlers.errors import DependencyInstallError, RequestTimeoutError

# What of pip's stderr an error quotes, at most.
MESSAGE_CHARS = 1500


def deps_key(requirements_file: Path, lines: list[str]) -> str:
    """A hash of what would be installed: the requirement lines and the files they name."""
    digest = hashlib.sha256(sys.version.encode())  # another interpreter needs other builds
    for line in lines:
        digest.update(line.encode() + b"\0")
        local = (requirements_file.parent / line).resolve()
        if local.is_file():
            digest.update(hashlib.sha256(local.read_bytes()).digest())
        elif local.is_dir():
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                digest.update(str(path.relative_to(local)).encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def pip_error(stderr: str) -> str:
    """The lines of pip's output that say what went wrong (its ERROR lines, else the last)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")] or lines[-5:]
    text = " ".join(errors) or "(pip said nothing)"
    return text if len(text) <= MESSAGE_CHARS else "..." + text[-MESSAGE_CHARS:]


def install_requirements(
    requirements_file: Path, lines: list[str], cache_dir: Path, timeout_s: float
) -> Path:
    """The folder holding ``lines`` installed (``pip install --target``), from ``cache_dir``
    when already there. Paths in the file are relative to its folder, where pip runs."""
    final = cache_dir / deps_key(requirements_file, lines)
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = cache_dir / f".incoming-{final.name}-{time.time_ns()}"
    command = [
        sys.executable, "-m", "pip", "install", "--target", str(scratch), "--no-input",
        "--disable-pip-version-check", "--no-warn-script-location", "--quiet",
        "-r", requirements_file.name,
    ]  # fmt: skip
    what = ", ".join(lines)
    try:
        process = subprocess.Popen(
            command,
            cwd=requirements_file.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: a timeout ends pip's children too
        )
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise RequestTimeoutError(
                f"Installing this archive's requirements ({what}) took over {timeout_s:g}s: "
                "pip was stopped (install_py_dep_per_model)"
            ) from None
        if process.returncode != 0:
            raise DependencyInstallError(
                f"pip could not install this archive's requirements ({what}): {pip_error(stderr)}"
            )
        try:
            scratch.rename(final)
        except OSError:  # another registration installed the same meanwhile: keep its folder
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
