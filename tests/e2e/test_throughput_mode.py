"""`make serve HAPROXY=1` (``deployments.launch --haproxy``): Serve's throughput mode, where
HAProxy replaces the Python HTTP proxy. Same API, same answers, same error handling."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.serve_cluster import ServeCluster, free_port, load_config, serve_run

pytestmark = pytest.mark.e2e
TOKEN = "e2e-throughput-token"
CAT_LABELS = {"tiger cat", "Egyptian cat", "tabby"}


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory, cat_png: bytes) -> Iterator[ServeCluster]:
    root = tmp_path_factory.mktemp("throughput")
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_LOG_DIR": str(root / "logs"),
        "RAYTORCH_TOKEN": TOKEN,
        # HAProxy's stats and metrics ports are fixed (8404, 9101) unless set: two
        # throughput-mode clusters on one machine would collide.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    launcher = ["--haproxy", "--metrics-port", str(free_port()), "--dashboard-port", str(free_port())]
    with serve_run(load_config("quickstart.yaml"), extra_env=env, launcher_args=launcher) as cluster:

        def first_prediction() -> bool:
            with cluster.client() as client:
                return client.put("/predictions/efficientnet_lite0", content=cat_png).status_code == 200

        cluster.wait_for(first_prediction, timeout=240, what="the first prediction in throughput mode")
        yield cluster


def test_predictions_batches_and_errors_as_usual(fast: ServeCluster, cat_png: bytes) -> None:
    assert "Throughput mode: HAProxy" in fast.log()

    def send(body: bytes) -> httpx.Response:
        with fast.client() as client:
            return client.post("/predictions/efficientnet_lite0", content=body)

    bodies = [cat_png] * 24 + [b"not an image"] * 4
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(send, bodies))
    good, bad = responses[:24], responses[24:]
    assert all(r.status_code == 200 and next(iter(r.json())) in CAT_LABELS for r in good)
    assert max(int(r.headers["x-batch-size"]) for r in good) > 1
    for response in bad:
        assert response.status_code == 400 and "image" in response.json()["message"].lower()


def test_health_metrics_and_management_answer(fast: ServeCluster) -> None:
    with fast.client() as client:
        assert client.get("/ping").json() == {"status": "Healthy"}
        assert "ts_inference_requests_total" in client.get("/metrics").text
        assert client.get("/models").status_code == 401
        models = client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()["models"]
        assert [m["modelName"] for m in models] == ["efficientnet_lite0"]
        missing = client.post("/predictions/nosuch", content=b"x")
        assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_inference_port_stays_on_loopback(fast: ServeCluster) -> None:
    # Ray 2.60 forces HAProxy onto all interfaces only when no host is configured; ours is.
    port = urlsplit(fast.base_url).port
    assert port is not None
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
