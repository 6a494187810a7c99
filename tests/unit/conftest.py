"""Unit tests never start Ray (as Ray Serve's own unit tests refuse to): a test that needs a
cluster belongs in tests/e2e. ``ray.init`` fails loudly here instead of starting one."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray: move this test to tests/e2e")

    monkeypatch.setattr(ray, "init", refuse)
