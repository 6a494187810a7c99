"""Watching it: a real headless Chromium opens the Ray dashboard with the sign-in link the
server prints, and finds every model version healthy on the Serve tab.

``RAYTORCH_SCREENSHOTS=docs/screenshots`` keeps the screenshot for the README.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from handlers.archive import write_archive
from raytorch.dashboard import LINK_TTL_S
from tests.e2e.browser import new_browser, screenshot, wait_for_text
from tests.e2e.conftest import TOKEN
from tests.e2e.serve_cluster import ROOT, ServeCluster
from tests.fixtures.models import tiny_classifier

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DASHBOARD = re.compile(r"Ray dashboard: (http://127\.0\.0\.1:\d+)/#/serve")
LINK = re.compile(r"sign this machine's browser in \(one use, \d+ min\): (http://127\.0\.0\.1:\d+/\S+)")
PROMPT = "Authentication Token Required"
WATCHED_VERSIONS = ("1.0", "2.0")


def _register_watched(cluster: ServeCluster) -> None:
    """A second model with two versions, registered at runtime next to the config's model."""
    store = Path(cluster.root) / "store"  # type: ignore[attr-defined]
    torch.save(tiny_classifier().state_dict(), store / "watched.pth")
    with cluster.client(timeout=180) as client:
        for version in WATCHED_VERSIONS:
            spec = {
                "name": "watched",
                "version": version,
                "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "watched.pth"},
                "preprocess": {"resize": 64, "crop": 56},
            }
            write_archive(spec, [store / "watched.pth"], store / f"watched-{version}.zip")
            answer = client.post(f"/models?url=watched-{version}.zip&num_cpus=0.1", headers=AUTH)
            assert answer.status_code == 200, answer.text


def _deployments_of_every_version(cluster: ServeCluster) -> set[str]:
    """``model:<name>@<version>``, the Serve deployment of each version the management API lists."""
    with cluster.client() as client:
        names = [m["modelName"] for m in client.get("/models", headers=AUTH).json()["models"]]
        return {
            f"model:{name}@{described['modelVersion']}"
            for name in names
            for described in client.get(f"/models/{name}/all", headers=AUTH).json()
        }


def _fresh_link(dashboard: str) -> tuple[str, subprocess.Popen]:
    """What the banner tells a user whose link expired: ``python -m raytorch.dashboard``."""
    port = dashboard.rsplit(":", 1)[1]
    helper = subprocess.Popen(
        [sys.executable, "-m", "raytorch.dashboard", "--dashboard-port", port],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in helper.stdout or []:
        if match := LINK.search(line):
            return match.group(1), helper
    raise AssertionError(f"python -m raytorch.dashboard printed no link (exit {helper.wait()})")


def test_sign_in_link_opens_the_serve_tab_with_every_model_version(
    quickstart: ServeCluster, chromium: None, tmp_path: Path
) -> None:
    quickstart.wait_for(lambda: bool(LINK.search(quickstart.log())), 120, "the dashboard sign-in link")
    log = quickstart.log()
    dashboard, link = DASHBOARD.search(log).group(1), LINK.search(log).group(1)  # type: ignore[union-attr]
    assert Path.home().joinpath(".ray", "auth_token").read_text().strip() not in log
    helper = None
    if time.monotonic() - quickstart.started_at > LINK_TTL_S - 120:  # the session's server is old
        link, helper = _fresh_link(dashboard)

    _register_watched(quickstart)
    browser = new_browser(tmp_path / "chromium", 1400, 1500)
    try:
        expected = _deployments_of_every_version(quickstart)
        assert {"model:efficientnet_lite0@1.0", "model:watched@1.0", "model:watched@2.0"} <= expected

        browser.get(dashboard + "/")
        wait_for_text(browser, lambda text: PROMPT in text, 60, "the dashboard's token prompt")

        browser.get(link)
        assert browser.current_url.startswith(dashboard + "/#/serve")
        wait_for_text(
            browser,
            lambda text: PROMPT not in text and all(f"{d}\nHEALTHY" in text for d in expected),
            90,
            f"every model version healthy on the Serve tab: {sorted(expected)}",
        )
        screenshot(browser, "dashboard-serve.png", tmp_path)

        # The link worked once; the dashboard still asks everyone else for the token.
        with pytest.raises(httpx.ConnectError):
            httpx.get(link, timeout=5)
        assert httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).status_code == 401
    finally:
        browser.quit()
        if helper:
            helper.kill()
        with quickstart.client(timeout=120) as client:
            for version in reversed(WATCHED_VERSIONS):  # the default version last
                client.delete(f"/models/watched/{version}", headers=AUTH)
