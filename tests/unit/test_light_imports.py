"""The ingress and management processes never import torch: it costs each of them seconds
of start-up and memory, and only model replicas (and custom-handler checks) need it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module", ["deployments.inference.ingress", "deployments.management.deployment", "deployments.app"]
)
def test_module_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
