"""`make serve METRICS=1`: a real Prometheus next to the server, on 127.0.0.1 only, scraping our
``/metrics`` and Ray's; PromQL counts the requests sent; its graph page draws request rate,
latency, batch sizes and replicas; it stops with the server.

``RAYTORCH_SCREENSHOTS=docs/screenshots`` keeps the graph page's screenshot for the README.
"""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from raytorch import prometheus
from tests.e2e.browser import new_browser, screenshot, wait_for_text
from tests.e2e.serve_cluster import ServeCluster, free_port, load_config, serve_run

pytestmark = pytest.mark.e2e
# The answers the test gets: 200s of the quickstart's model (503s while it loads count apart).
SERIES = {"model_name": "efficientnet_lite0", "model_version": "1.0", "code": "200"}
COUNTER = 'sum(raytorch_requests_total{model_name="efficientnet_lite0",model_version="1.0",code="200"})'
# What the README's "Graphs" section shows, one graph each.
GRAPHS = {
    "requests/s": "sum by (model_name, model_version) (rate(raytorch_requests_total[1m]))",
    "p50 latency": (
        "histogram_quantile(0.5, sum by (le, model_name, model_version) "
        "(rate(raytorch_request_latency_seconds_bucket[1m])))"
    ),
    "mean batch size": (
        "sum by (model_name, model_version) (rate(raytorch_batch_size_sum[1m])) / "
        "sum by (model_name, model_version) (rate(raytorch_batch_size_count[1m]))"
    ),
    "replicas": "raytorch_replicas_ready",
}


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory, cat_png: bytes) -> Iterator[ServeCluster]:
    try:
        prometheus.install()  # what --prometheus does first: apt-get when missing
    except prometheus.PrometheusError as exc:
        pytest.skip(f"Prometheus cannot be installed here: {exc}")
    root = tmp_path_factory.mktemp("metrics")
    (root / "store").mkdir()
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(root / "store"),
        "RAYTORCH_LOG_DIR": str(root / "logs"),
    }
    prometheus_port, dashboard_port = free_port(), free_port()
    launcher = ["--metrics-port", str(free_port()), "--dashboard-port", str(dashboard_port)]
    launcher += ["--prometheus", "--prometheus-port", str(prometheus_port)]
    with serve_run(load_config("quickstart.yaml"), extra_env=env, launcher_args=launcher) as running:
        running.prometheus = f"http://127.0.0.1:{prometheus_port}"  # type: ignore[attr-defined]
        running.prometheus_port = prometheus_port  # type: ignore[attr-defined]
        running.dashboard = f"http://127.0.0.1:{dashboard_port}"  # type: ignore[attr-defined]

        def first_prediction() -> bool:
            with running.client() as client:
                return client.put("/predictions/efficientnet_lite0", content=cat_png).status_code == 200

        running.wait_for(first_prediction, timeout=240, what="the first prediction")
        yield running


def _query(cluster: ServeCluster, promql: str) -> float | None:
    """The single value of an instant PromQL query, or None when it has no data yet."""
    answer = httpx.get(f"{cluster.prometheus}/api/v1/query", params={"query": promql}, timeout=10)  # type: ignore[attr-defined]
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _served(cluster: ServeCluster) -> float:
    """Our request counter for ``SERIES``, read from the server's own /metrics."""
    total = 0.0
    for line in httpx.get(f"{cluster.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("raytorch_requests_total{") and all(
            f'{k}="{v}"' in line for k, v in SERIES.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_until_scraped(cluster: ServeCluster, expected: float) -> None:
    seen: list[float | None] = []

    def counted() -> bool:
        seen.append(_query(cluster, COUNTER))
        return seen[-1] == expected

    try:
        cluster.wait_for(counted, 60, f"Prometheus to count {expected:.0f}")
    except AssertionError:
        raise AssertionError(
            f"{COUNTER} stayed {seen[-1]} (expected {expected}); queried {len(seen)}x"
        ) from None


def test_prometheus_scrapes_both_jobs_and_counts_the_requests_sent(
    metrics_server: ServeCluster, cat_png: bytes
) -> None:
    url = metrics_server.prometheus  # type: ignore[attr-defined]
    assert f"Prometheus: {url}/graph" in metrics_server.log()

    def both_jobs_up() -> bool:
        targets = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets} == {"raytorch": "up", "ray": "up"}

    metrics_server.wait_for(both_jobs_up, 60, "both scrape jobs healthy")
    before = _served(metrics_server)
    _wait_until_scraped(metrics_server, before)
    with metrics_server.client() as client:
        for _ in range(6):
            assert client.put("/predictions/efficientnet_lite0", content=cat_png).status_code == 200
    _wait_until_scraped(metrics_server, before + 6)
    assert _query(metrics_server, 'sum(up{job=~"raytorch|ray"})') == 2

    # Ray's dashboard was told where Prometheus is (RAY_PROMETHEUS_HOST).
    token = Path.home().joinpath(".ray", "auth_token").read_text().strip()
    health = httpx.get(
        f"{metrics_server.dashboard}/api/prometheus_health",  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert health.json()["result"] is True


def test_prometheus_is_not_reachable_from_other_machines(metrics_server: ServeCluster) -> None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: it only picks the interface
            address = probe.getsockname()[0]
    except OSError:
        pytest.skip("this machine has no network interface besides loopback")
    if address.startswith("127."):
        pytest.skip("this machine has no network interface besides loopback")
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex((address, metrics_server.prometheus_port)) != 0  # type: ignore[attr-defined]


def test_graph_page_draws_rate_latency_batches_and_replicas(
    metrics_server: ServeCluster, chromium: None, cat_png: bytes, tmp_path: Path
) -> None:
    # Half a minute of traffic from 4 clients: two scrapes or more, batches bigger than one.
    deadline = time.monotonic() + 30

    def client_loop() -> None:
        with metrics_server.client() as client:
            while time.monotonic() < deadline:
                client.put("/predictions/efficientnet_lite0", content=cat_png)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(client_loop) for _ in range(4)]:
            future.result()
    _wait_until_scraped(metrics_server, _served(metrics_server))

    params: dict[str, str] = {}
    for i, expr in enumerate(GRAPHS.values()):
        params |= {f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": "1m"}
    browser = new_browser(tmp_path / "chromium", 1400, 3100)
    try:
        browser.get(f"{metrics_server.prometheus}/graph?{urllib.parse.urlencode(params)}")  # type: ignore[attr-defined]
        text = wait_for_text(
            browser,
            lambda page: page.count('model_name="efficientnet_lite0"') >= len(GRAPHS),
            60,
            "a series for the model in every graph",
        )
        assert "No datapoints found" not in text
        screenshot(browser, "prometheus-graphs.png", tmp_path)
    finally:
        browser.quit()


def test_prometheus_stops_with_the_server(metrics_server: ServeCluster) -> None:
    metrics_server.process.send_signal(signal.SIGTERM)  # what Ctrl-C / a service manager does
    metrics_server.process.wait(timeout=60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", metrics_server.prometheus_port)) != 0:  # type: ignore[attr-defined]
                return
        time.sleep(0.5)
    raise AssertionError("Prometheus still answers after the server stopped")
