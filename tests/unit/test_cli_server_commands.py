"""`raytorch serve CONFIG` and `raytorch torchserve ...`: the installed command runs the server
(what `make serve` runs) and TorchServe's command line, each with its own flags."""

from __future__ import annotations

import pytest

from raytorch import cli, launch, torchserve_cli


def test_serve_runs_the_launcher_with_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(launch, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["serve", "configs/quickstart.yaml", "--metrics-port", "9999"]) == 0
    assert seen == [["configs/quickstart.yaml", "--metrics-port", "9999"]]


def test_torchserve_takes_torchserves_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(torchserve_cli, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["torchserve", "--start", "--ncs", "--model-store", "store"]) == 0
    assert seen == [["--start", "--ncs", "--model-store", "store"]]


def test_both_are_listed_in_the_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "serve" in out and "torchserve" in out
