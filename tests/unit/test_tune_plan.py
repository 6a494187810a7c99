"""``raytorch tune`` without a server: the layouts it tries, the config each one is, the rule
that picks the winner, and the files it writes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.common.settings import BatchingConfig, ModelAppArgs
from raytorch import tune, tune_report
from raytorch.tune_plan import (
    ONGOING_PER_BATCH,
    Goal,
    Layout,
    Row,
    app_args,
    apply_layout,
    batching_layouts,
    choose,
    current_layout,
    measured_config,
    reserved_cpus,
    restarts_replicas,
    split_budget,
    thread_layouts,
)

ROOT = Path(__file__).resolve().parents[2]


def row(replicas: int, rps: float, p99: float, errors: int = 0, threads: int | None = None) -> Row:
    return Row(Layout(replicas, threads, 8, 0.0, 1.0), "layout", rps, p99 / 2, p99, errors, 2.0)


def quickstart() -> dict:
    return yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())


def test_target_rps_picks_the_lowest_p99_among_layouts_that_reach_it() -> None:
    rows = [row(1, 30, 200), row(2, 24, 90), row(3, 20, 50), row(4, 12, 40)]
    winner, reason = choose(rows, Goal(target_rps=20))
    # 12 req/s misses the target despite the lowest p99; of the three that reach 20, the lowest p99.
    assert winner is rows[2]
    assert "reaches 20 req/s" in reason
    assert [r.meets for r in rows] == [True, True, True, False]


def test_target_rps_counts_a_layout_with_errors_as_missing_it() -> None:
    rows = [row(1, 25, 50, errors=3), row(2, 22, 300)]
    assert choose(rows, Goal(target_rps=20))[0] is rows[1]


def test_target_rps_nobody_reaches_gives_the_highest_throughput() -> None:
    rows = [row(1, 10, 50), row(2, 15, 900), row(3, 0, math.nan)]
    winner, reason = choose(rows, Goal(target_rps=100))
    assert winner is rows[1]
    assert reason.startswith("none reaches 100 req/s")


def test_latency_bound_picks_the_highest_throughput_within_it() -> None:
    rows = [row(1, 40, 900), row(2, 30, 480), row(3, 20, 100)]
    winner, reason = choose(rows, Goal(latency_ms=500, concurrency=8))
    assert winner is rows[1]
    assert "p99 <= 500 ms" in reason


def test_latency_bound_nobody_within_gives_the_lowest_p99() -> None:
    rows = [row(1, 40, 900), row(2, 30, 700)]
    winner, reason = choose(rows, Goal(latency_ms=100, concurrency=8))
    assert winner is rows[1]
    assert reason.startswith("none keeps p99 <= 100 ms")


def test_nothing_measured_is_an_error() -> None:
    with pytest.raises(ValueError, match="no layout answered"):
        choose([row(1, 0, math.nan)], Goal(target_rps=5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "name one goal"),
        ({"target_rps": 5, "latency_ms": 100, "concurrency": 4}, "name one goal"),
        ({"latency_ms": 100}, "needs --concurrency"),
        ({"target_rps": 0}, "above 0"),
    ],
)
def test_goal_must_be_one_well_formed_load(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Goal(**kwargs)


def test_phase_one_starts_with_the_config_and_fits_the_machine() -> None:
    base = current_layout(app_args(quickstart(), "efficientnet_lite0"))
    layouts = thread_layouts(base, cores=2, free_cpus=1.9)
    assert layouts[0] == base
    shapes = [(lay.replicas, lay.torch_threads) for lay in layouts]
    assert shapes == [(1, None), (2, 1), (1, 2), (2, None)]
    # Two replicas of num_cpus 1 do not fit next to the ingress's 0.1 on 2 cores: 0.95 each.
    assert all(lay.replicas * lay.num_cpus <= 1.9 for lay in layouts[1:])
    assert {lay.max_batch_size for lay in layouts} == {8}


def test_phase_one_on_a_big_machine_tries_a_share_of_the_cores_per_replica() -> None:
    base = Layout(1, None, 8, 0.0, 1.0)
    shapes = [(lay.replicas, lay.torch_threads) for lay in thread_layouts(base, cores=16, free_cpus=15.9)]
    assert shapes[:5] == [(1, None), (16, 1), (8, 2), (2, 8), (1, 16)]
    assert (1, 1) not in shapes  # one thread alone leaves 15 cores idle


def test_phase_two_varies_batching_of_the_best_layout_only() -> None:
    best = Layout(2, 1, 8, 0.0, 0.95)
    layouts = batching_layouts(best)
    assert [(lay.max_batch_size, lay.batch_wait_s) for lay in layouts] == [
        (16, 0.0),
        (4, 0.0),
        (8, 0.005),
        (1, 0.0),
        (32, 0.0),
    ]
    assert {(lay.replicas, lay.torch_threads, lay.num_cpus) for lay in layouts} == {(2, 1, 0.95)}


def test_budget_gives_a_third_to_batching() -> None:
    assert split_budget(3) == (2, 1)
    assert split_budget(8) == (6, 2)
    with pytest.raises(ValueError):
        split_budget(0)


def test_apply_layout_changes_only_the_tuned_fields() -> None:
    config = quickstart()
    tuned = apply_layout(config, "efficientnet_lite0", Layout(2, 1, 16, 0.005, 0.95))
    args = tuned["applications"][2]["args"]
    assert args["model"]["torch_threads"] == 1
    assert args["batching"] == {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}
    assert args["resources"] == {"num_replicas": 2, "num_cpus": 0.95, "num_gpus": 0}
    ModelAppArgs.model_validate(args)
    # Everything else is the config as given, and the input is not modified.
    for key in ("proxy_location", "http_options", "grpc_options"):
        assert tuned[key] == config[key]
    assert tuned["applications"][:2] == config["applications"][:2]
    assert config["applications"][2]["args"]["resources"]["num_replicas"] == 1


def test_reserved_cpus_counts_the_other_applications() -> None:
    assert reserved_cpus(quickstart(), "efficientnet_lite0") == pytest.approx(0.1)  # the ingress


def test_batching_and_replicas_are_measured_without_restarting_replicas() -> None:
    config = quickstart()
    app = "efficientnet_lite0"
    base = measured_config(config, app, Layout(1, None, 8, 0.0, 1.0))
    more = measured_config(config, app, Layout(2, None, 16, 0.005, 1.0))
    threads = measured_config(config, app, Layout(1, 1, 8, 0.0, 1.0))
    # Serve restarts replicas when an app's args change; the overrides change only what running
    # replicas take in place (user_config, replica count, concurrency limit).
    assert not restarts_replicas(base, more, app)
    assert restarts_replicas(base, threads, app)
    assert more["applications"][2]["deployments"] == [
        {
            "name": "model:efficientnet_lite0@1.0",
            "num_replicas": 2,
            "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005, "wait_for_idle_model": True},
            "max_ongoing_requests": 128,
        }
    ]
    BatchingConfig.model_validate(more["applications"][2]["deployments"][0]["user_config"])
    assert ServeDeploySchema.model_validate(more)


def test_ongoing_per_batch_is_the_builders() -> None:
    from deployments.model import builder

    assert ONGOING_PER_BATCH == builder.ONGOING_PER_BATCH


def test_written_files_hold_the_config_and_the_table(tmp_path: Path) -> None:
    source = tmp_path / "quickstart.yaml"
    source.write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    rows = [row(1, 20, 100), row(2, 30, 80, threads=1)]
    winner, reason = choose(rows, Goal(target_rps=25))
    config = apply_layout(quickstart(), "efficientnet_lite0", winner.layout)
    paths = tune_report.write_outputs(
        source, config, [("efficientnet_lite0", rows, winner, reason)], ["a run"]
    )
    assert [p.name for p in paths] == ["quickstart.tuned.yaml", "quickstart.tuned.md", "quickstart.tuned.csv"]
    text = paths[0].read_text()
    assert text.startswith("# a run\n")
    assert "| 2* | layout | 2 | 1 |" in text
    assert yaml.safe_load(text) == config
    table = list(csv.DictReader(paths[2].read_text().splitlines()))
    assert [(r["#"], r["req/s"], r["meets goal"]) for r in table] == [
        ("1", "20.00", "no"),
        ("2*", "30.00", "yes"),
    ]
    assert "row 2 chosen: reaches 25 req/s" in paths[1].read_text()


def test_command_refuses_a_missing_goal_or_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = ROOT / "configs" / "quickstart.yaml"
    assert tune.main([str(config)]) == 2
    assert "name one goal" in capsys.readouterr().err
    assert tune.main([str(config), "--target-rps", "5", "--model", "nope"]) == 1
    assert "no model application nope" in capsys.readouterr().err
    assert tune.main([str(config), "--target-rps", "5", "--input", str(tmp_path / "none.jpg")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_command_names_a_bad_config_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = quickstart()
    config["applications"][2]["args"]["batching"]["max_batch_size"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert tune.main([str(bad), "--target-rps", "5"]) == 1
    err = capsys.readouterr().err
    assert "application efficientnet_lite0" in err and "max_batch_size" in err
    (tmp_path / "broken.yaml").write_text("applications: [")
    assert tune.main([str(tmp_path / "broken.yaml"), "--target-rps", "5"]) == 1
    assert "is not YAML" in capsys.readouterr().err


class _FailingSession:
    """A session whose server refuses every layout the way ``error`` says."""

    def __init__(self, error: Exception) -> None:
        self.error, self.stopped = error, 0

    def run(self, *args: object) -> None:
        raise self.error

    def stop(self) -> None:
        self.stopped += 1


def test_a_layout_that_cannot_deploy_is_a_row_that_says_so() -> None:
    from raytorch.local_server import ServerError

    session = _FailingSession(ServerError("timed out after 180s waiting for application x to redeploy:\nlog"))
    layout = Layout(2, 1, 8, 0.0, 0.95)
    args = tune.parse_args(["c.yaml", "--target-rps", "5"])
    rows = tune.measure_layouts(
        session, quickstart(), "efficientnet_lite0", [layout], "layout", (b"", "x"), Goal(5), args
    )  # type: ignore[arg-type]
    assert [(r.layout, r.measured, r.note) for r in rows] == [
        (layout, False, "did not deploy: timed out after 180s waiting for application x to redeploy:")
    ]
    assert session.stopped == 1  # the next layout gets a fresh server


def test_an_input_the_model_refuses_stops_the_command() -> None:
    from raytorch.local_server import InputRefused

    session = _FailingSession(InputRefused("PUT /predictions/efficientnet_lite0 answered 415: not an image"))
    args = tune.parse_args(["c.yaml", "--target-rps", "5"])
    with pytest.raises(tune.TuneError, match=r"refuses the input.*415"):
        tune.measure_layouts(
            session,
            quickstart(),
            "efficientnet_lite0",
            [Layout(1, None, 8, 0.0, 1.0)],
            "config",
            (b"", "x"),
            Goal(5),
            args,
        )  # type: ignore[arg-type]


def test_raytorch_command_dispatches_tune(capsys: pytest.CaptureFixture) -> None:
    from raytorch import cli

    config = str(ROOT / "configs" / "quickstart.yaml")
    assert cli.main(["tune", config]) == 2
    assert cli.main(["--server", "http://127.0.0.1:1", "tune", config]) == 2
    assert capsys.readouterr().err.count("name one goal") == 2
