"""Operators' view on a real server: /metrics, the access log, Ray's metrics port, /ping."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import torch

from handlers.archive import write_archive
from tests.e2e.conftest import TOKEN, read_access_log
from tests.e2e.serve_cluster import ServeCluster
from tests.fixtures.models import tiny_classifier

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _sample(text: str, name: str, **labels: str) -> float:
    """Value of one Prometheus sample whose labels include ``labels`` (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_with_traffic(quickstart: ServeCluster, cat_png: bytes) -> None:
    labels = {"model_name": "efficientnet_lite0", "model_version": "1.0"}
    with quickstart.client() as client:
        before = client.get("/metrics").text
        for _ in range(4):
            assert client.put("/predictions/efficientnet_lite0", content=cat_png).status_code == 200
        assert client.put("/predictions/efficientnet_lite0", content=b"junk").status_code == 400
        after = client.get("/metrics").text
    assert (
        _sample(after, "ts_inference_requests_total", **labels)
        - _sample(before, "ts_inference_requests_total", **labels)
        == 5
    )
    assert (
        _sample(after, "raytorch_requests_total", code="200", **labels)
        - _sample(before, "raytorch_requests_total", code="200", **labels)
        == 4
    )
    assert _sample(after, "ts_inference_latency_microseconds_total", **labels) > 0
    for stage in ("preprocess", "queue", "inference"):
        assert _sample(after, "raytorch_stage_latency_seconds_count", stage=stage, **labels) >= 4
    assert _sample(after, "raytorch_batch_size_count", **labels) >= 4
    assert _sample(after, "raytorch_replicas_ready", **labels) == 1
    assert _sample(after, "raytorch_model_load_seconds", **labels) > 0


def test_access_log_matches_response_ids(quickstart: ServeCluster, cat_png: bytes) -> None:
    with quickstart.client() as client:
        ids = [
            client.put("/predictions/efficientnet_lite0", content=cat_png).headers["x-request-id"]
            for _ in range(3)
        ]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(i in read_access_log(quickstart) for i in ids):
        time.sleep(0.2)
    lines = [line for line in read_access_log(quickstart).splitlines() if any(i in line for i in ids)]
    assert len(lines) == 3
    assert all("model=efficientnet_lite0 version=1.0" in line and " 200 " in line for line in lines)
    # The console shows each request once: our line, not a second one from Serve's replica log.
    quickstart.wait_for(lambda: ids[-1] in quickstart.log(), 10, "the access line on the console")
    assert sum(ids[0] in line for line in quickstart.log().splitlines()) == 1


def test_console_shows_management_calls_but_no_routing_polls(quickstart: ServeCluster) -> None:
    with quickstart.client() as client:
        assert client.get("/models", headers={"Authorization": "Bearer x"}).status_code == 401
    quickstart.wait_for(lambda: '"GET /models" 401' in quickstart.log(), 30, "the management access line")
    log = quickstart.log()
    assert "Management API ready" in log
    assert "CALL routing" not in log


def test_ray_metrics_on_the_fixed_port(quickstart: ServeCluster, cat_png: bytes) -> None:
    url = f"http://127.0.0.1:{quickstart.metrics_port}/metrics"  # type: ignore[attr-defined]

    def exported() -> bool:
        return "ray_serve_" in httpx.get(url, timeout=10).text

    quickstart.wait_for(exported, timeout=60, what="Ray's metrics on the fixed port")


def test_second_model_and_ping_follow_replicas(quickstart: ServeCluster, cat_png: bytes) -> None:
    store = quickstart.root / "store"  # type: ignore[attr-defined]
    torch.save(tiny_classifier().state_dict(), store / "tiny.pth")
    spec = {
        "name": "tiny",
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "tiny.pth"},
        "preprocess": {"resize": 64, "crop": 56},
    }
    write_archive(spec, [store / "tiny.pth"], store / "tiny.zip")
    with quickstart.client(timeout=180) as client:
        assert client.post("/models?url=tiny.zip&num_cpus=0.25", headers=AUTH).status_code == 200
        assert client.put("/predictions/tiny", content=cat_png).status_code == 200
        metrics = client.get("/metrics").text
        assert _sample(metrics, "ts_inference_requests_total", model_name="tiny", model_version="1.0") == 1
        assert client.get("/ping").json() == {"status": "Healthy"}

        # No replica left: /ping says which model is unhealthy; it recovers with the replica.
        assert client.put("/models/tiny?min_worker=0&synchronous=true", headers=AUTH).status_code == 200
        quickstart.wait_for(
            lambda: client.get("/ping").status_code == 500, timeout=30, what="/ping unhealthy"
        )
        assert "tiny/1.0" in client.get("/ping").json()["models"]
        assert client.put("/models/tiny?min_worker=1&synchronous=true", headers=AUTH).status_code == 200
        quickstart.wait_for(lambda: client.get("/ping").status_code == 200, timeout=60, what="/ping healthy")
