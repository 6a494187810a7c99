"""The quickstart server shared by the e2e modules that only read from it.

Started the way `make serve` starts it (``python -m raytorch.launch``: Ray's metrics on a
fixed port), with its own state, model store, log directory and token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.browser import ensure_chromium
from tests.e2e.serve_cluster import ServeCluster, free_port, load_config, serve_run, trust_test_fixtures

BODY_LIMIT = 1_000_000
TOKEN = "e2e-quickstart-token"


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory, cat_png: bytes) -> Iterator[ServeCluster]:
    root = tmp_path_factory.mktemp("quickstart")
    (root / "store").mkdir()
    config = trust_test_fixtures(load_config("quickstart.yaml"))
    ingress = next(a for a in config["applications"] if a["name"] == "ingress")
    ingress["args"]["max_body_bytes"] = BODY_LIMIT
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(root / "store"),
        "RAYTORCH_LOG_DIR": str(root / "logs"),
        "RAYTORCH_TOKEN": TOKEN,
    }
    metrics_port = free_port()
    launcher = ["--metrics-port", str(metrics_port), "--dashboard-port", str(free_port())]
    with serve_run(config, extra_env=env, launcher_args=launcher) as running:
        running.metrics_port = metrics_port  # type: ignore[attr-defined]
        running.root = root  # type: ignore[attr-defined]

        def first_prediction() -> bool:
            with running.client() as client:
                return client.put("/predictions/efficientnet_lite0", content=cat_png).status_code == 200

        seconds = running.wait_for(first_prediction, timeout=240, what="the first prediction")
        print(f"\nlaunch -> first prediction: {seconds:.1f}s")
        yield running


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's headless Chromium and chromedriver, installed with apt-get when missing."""
    reason = ensure_chromium()
    if reason:
        pytest.skip(f"no headless Chromium to drive: {reason}")


def read_access_log(cluster: ServeCluster) -> str:
    """The ingress's access log file."""
    path = Path(cluster.root) / "logs" / "access.log"  # type: ignore[attr-defined]
    return path.read_text() if path.exists() else ""
