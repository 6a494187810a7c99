"""`raytorch tune` on a real server: a tiny model, 3 layouts of 2 seconds, a latency bound.

It must write a tuned config that our settings models accept, differs from the input only in
the tuned fields, and serves (the command checks it on its own server before it stops), with
one table row per layout measured and the winner the rule names."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from deployments.common.settings import ModelAppArgs
from tests.e2e.serve_cluster import ROOT, load_config

TUNED = ("torch_threads", "max_batch_size", "batch_wait_timeout_s", "num_replicas", "num_cpus")


def tiny_config() -> dict:
    """The quickstart's layout serving the tests' tiny CNN (loads in a second)."""
    config = load_config("quickstart.yaml")
    model = config["applications"][2]
    model["name"] = "tiny"
    model["args"]["model"] = {
        "name": "tiny",
        "version": "1.0",
        "handler": "image_classifier",
        "source": {"factory": "tests.fixtures.models:tiny_classifier"},
    }
    return config


def _without_tuned(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_tuned(v) for k, v in value.items() if k not in TUNED}
    if isinstance(value, list):
        return [_without_tuned(v) for v in value]
    return value


def test_tune_writes_a_config_that_serves_and_the_table_that_chose_it(tmp_path: Path) -> None:
    source = tmp_path / "tiny.yaml"
    source.write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    command = [sys.executable, "-m", "raytorch.cli", "tune", str(source)]
    command += ["--latency-ms", "5000", "--concurrency", "4", "--seconds", "2", "--layouts", "3"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stderr[-4000:]

    # The config: valid for our settings models, the input's structure with only tuned fields changed.
    tuned_path = tmp_path / "tiny.tuned.yaml"
    tuned = yaml.safe_load(tuned_path.read_text())
    ModelAppArgs.model_validate(tuned["applications"][2]["args"])
    assert _without_tuned(tuned) == _without_tuned(tiny_config())
    assert tuned_path.read_text().startswith(
        "# Tuned by `raytorch tune tiny.yaml --latency-ms 5000 --concurrency 4 --seconds 2 --layouts 3`"
    )

    # The table: one row per layout, each measured, the winner the one the rule names.
    rows = list(csv.DictReader((tmp_path / "tiny.tuned.csv").read_text().splitlines()))
    assert len(rows) == 3
    assert all(float(r["req/s"]) > 0 for r in rows), rows
    within = [r for r in rows if r["meets goal"] == "yes"]
    assert within, rows  # 5 s is far above a tiny CNN's p99 at concurrency 4
    assert all(float(r["p99 ms"]) <= 5000 for r in within)
    winner = next(r for r in rows if r["#"].endswith("*"))
    assert float(winner["req/s"]) == max(float(r["req/s"]) for r in within)
    chosen = tuned["applications"][2]["args"]
    threads = chosen["model"]["torch_threads"]
    assert (str(chosen["resources"]["num_replicas"]), "auto" if threads is None else str(threads)) == (
        winner["replicas"],
        winner["threads"],
    )
    assert int(winner["batch"]) == chosen["batching"]["max_batch_size"]
    assert not math.isnan(float(winner["p99 ms"]))

    # It served: the command deployed the written file and got answers before stopping its server.
    assert "checked: tiny.tuned.yaml loads and its model(s) answer" in done.stdout
    assert "| # | phase |" in (tmp_path / "tiny.tuned.md").read_text()
    log_dirs = [
        line.split("log: ")[1].rsplit("/", 1)[0] for line in done.stdout.splitlines() if "log: " in line
    ]
    assert log_dirs and not any(Path(d).exists() for d in log_dirs)  # stopped and cleaned up
