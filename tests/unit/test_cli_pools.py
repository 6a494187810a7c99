"""The command line's pool and traffic options turn into the management API's parameters."""

from __future__ import annotations

from typing import Any

import pytest

from raytorch import cli
from raytorch.client import Client


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict]]:
    calls: list[tuple[str, str, dict]] = []

    def request(self: Client, method: str, path: str, params: dict | None = None, body: Any = None) -> Any:
        calls.append((method, path, {k: v for k, v in (params or {}).items() if v is not None}))
        return 200, {"status": "ok"}, {}

    monkeypatch.setattr(Client, "request", request)
    return calls


def test_traffic_commands(sent: list[tuple[str, str, dict]]) -> None:
    assert cli.main(["--token", "t", "traffic", "m", "--split", "1.0=90,2.0=10"]) == 0
    assert cli.main(["--token", "t", "traffic", "m", "--shadow", "3.0", "--shadow-percent", "10"]) == 0
    assert cli.main(["--token", "t", "traffic", "m"]) == 0
    assert cli.main(["--token", "t", "traffic", "m", "--clear"]) == 0
    assert sent == [
        ("PUT", "/models/m/traffic", {"split": "1.0:90,2.0:10", "shadow_percent": 100.0}),
        ("PUT", "/models/m/traffic", {"shadow": "3.0", "shadow_percent": 10.0}),
        ("GET", "/models/m/traffic", {}),
        ("DELETE", "/models/m/traffic", {}),
    ]


def test_register_into_a_pool(sent: list[tuple[str, str, dict]]) -> None:
    assert cli.main(["--token", "t", "register", "c42.zip", "--pool", "small", "--no-wait"]) == 0
    assert cli.main(["--token", "t", "register", "big.mar", "--dedicated", "--no-wait"]) == 0
    assert sent[0][2] == {"url": "c42.zip", "pool": "small", "synchronous": "false"}
    assert sent[1][2] == {"url": "big.mar", "dedicated": "true", "synchronous": "false"}
