"""benchmarks/gpu_check.py without a GPU: its table and ratios on given numbers, its raw
measurement on the CPU, and its clear skip on a machine without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def _cells(text: str, model: str, level: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {model} | {level} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_gives_ours_over_each_ceiling() -> None:
    results = {
        "resnet18": {
            "raw_fp32": 4000.0,
            "raw_fp16": 10000.0,
            "feed": 2000.0,
            "ours": {16: {"rps": 1000.0, "p99_ms": 40.0}, 64: {"rps": 1500.0, "p99_ms": 90.0}},
        },
        "densenet161": {
            "raw_fp32": 800.0,
            "raw_fp16": 1600.0,
            "raw_compiled": 2000.0,  # compiled beats eager: it is the half-precision ceiling
            "feed": 2000.0,
            "ours": {16: {"rps": 1000.0, "p99_ms": 100.0}},
        },
    }
    text = gpu_check.table(results, "fp16")
    # ours / raw fp32, / raw fp16, / the lower of raw fp16 and the CPU feed
    assert _cells(text, "resnet18", "64")[2:] == [
        "1500.0",
        "90",
        "4000.0",
        "10000.0",
        "2000.0",
        "0.38",
        "0.15",
        "0.75",
    ]
    assert _cells(text, "resnet18", "16")[7:] == ["0.25", "0.10", "0.50"]
    assert _cells(text, "densenet161", "16")[5:] == ["2000.0", "2000.0", "1.25", "0.50", "0.50"]


def test_table_marks_what_was_not_measured() -> None:
    text = gpu_check.table({"resnet18": {"raw_fp32": 100.0, "feed": None}}, "bf16")
    assert "raw bf16" in text
    assert _cells(text, "resnet18", "-") == ["resnet18", "-", "-", "-", "100.0", "-", "-", "-", "-", "-"]


def test_forward_rate_measures_on_any_device() -> None:
    rate = gpu_check.forward_rate("resnet18", batch=1, dtype="fp32", seconds=0.2, device="cpu")
    assert rate > 0


def test_without_a_gpu_it_says_skipped_and_succeeds() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for minutes")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no GPU: skipped" in done.stdout


def test_server_config_is_the_densenet_layout_on_half_a_gpu_per_replica() -> None:
    from deployments.common.settings import ModelAppArgs

    config = gpu_check.server_config("resnet18")
    model = next(a for a in config["applications"] if a["import_path"].endswith(":build_model"))
    args = ModelAppArgs.model_validate(model["args"])
    assert model["name"] == args.model.name == "resnet18"
    assert args.model.source.architecture == "resnet18" and args.model.source.weights is None
    assert (args.resources.num_replicas, args.resources.num_gpus, args.resources.gpu_policy) == (
        2,
        0.5,
        "required",
    )
