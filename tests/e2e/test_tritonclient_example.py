"""The tritonclient script shown in the README and docs/protocols.md, run as a user would
against the quickstart server: both transports classify the cat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.serve_cluster import ROOT, ServeCluster
from tests.fixtures.specs import photo_path

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "examples" / "tritonclient_quickstart.py"


def test_the_docs_show_the_script_whole() -> None:
    for doc in ("README.md", "docs/protocols.md"):
        assert SCRIPT.read_text() in (ROOT / doc).read_text(), doc


def test_the_script_classifies_the_cat_over_http_and_grpc(quickstart: ServeCluster, tmp_path: Path) -> None:
    cat = tmp_path / "cat.png"
    cat.write_bytes(photo_path("chelsea.png").read_bytes())
    command = [sys.executable, str(SCRIPT), str(cat), "--http", quickstart.base_url.removeprefix("http://")]
    out = subprocess.run(
        [*command, "--grpc", quickstart.grpc_target], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    http_part, grpc_part = out.split("gRPC (")
    assert "tabby" in http_part and "tabby" in grpc_part, out
    assert http_part.splitlines()[1:] == grpc_part.splitlines()[1:], out  # the same answer both ways
