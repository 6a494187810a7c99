"""Model management on a real `serve run`: TorchServe's /models API end to end.

One story: auth, register a real torch-model-archiver .mar and one of our archives, predict,
scale, a second version and a new default, unregister under traffic with nothing hanging,
then a full restart that brings them back from the state database.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
import torchvision

from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run, trust_test_fixtures

pytestmark = pytest.mark.e2e

TOKEN = "e2e-management-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL_PY = """
from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    def __init__(self):
        super().__init__(BasicBlock, [2, 2, 2, 2])
"""


def build_mar(store: Path, work: Path, version: str) -> Path:
    """resnet18 (random weights) packed by the real torch-model-archiver CLI."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(MODEL_PY)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), work / "resnet18.pth")
    archiver = (
        shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent)) or "torch-model-archiver"
    )
    subprocess.run(
        [archiver, "--model-name", f"resnet18_v{version}", "--version", version, "--model-file", "model.py",
         "--serialized-file", "resnet18.pth", "--handler", "image_classifier", "--export-path", str(store)],
        cwd=work, check=True,
    )  # fmt: skip
    return store / f"resnet18_v{version}.mar"


def build_ours(store: Path, work: Path) -> Path:
    """A tiny model packed with our own `raytorch archive` command."""
    from tests.fixtures.models import tiny_classifier

    work.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_classifier().state_dict(), work / "tiny.pth")
    cli = shutil.which("raytorch", path=str(Path(sys.executable).parent)) or "raytorch"
    subprocess.run(
        [cli, "archive", "--name", "tiny", "--factory", "tests.fixtures.models:tiny_classifier",
         "--state-dict", str(work / "tiny.pth"), "-o", str(store / "tiny.zip")],
        check=True,
    )  # fmt: skip
    return store / "tiny.zip"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mgmt")
    store = root / "store"
    store.mkdir()
    build_mar(store, root / "v1", "1.0")
    build_mar(store, root / "v2", "2.0")
    build_ours(store, root / "ours")
    config = trust_test_fixtures(load_config("quickstart.yaml"))
    config["applications"] = [a for a in config["applications"] if a["name"] in ("ingress", "management")]
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_TOKEN": TOKEN,
    }
    return {"config": config, "env": env, "root": root}


def _up(cluster: ServeCluster) -> None:
    def ready() -> bool:
        with cluster.client() as client:
            return client.get("/models", headers=AUTH).status_code == 200

    cluster.wait_for(ready, timeout=180, what="the management API")


def _register(client: httpx.Client, query: str) -> httpx.Response:
    return client.post(f"/models?{query}&num_cpus=0.25", headers=AUTH, timeout=180)


def test_management_story(setup: dict, cat_png: bytes) -> None:
    with serve_run(setup["config"], extra_env=setup["env"]) as cluster:
        _up(cluster)
        with cluster.client() as client:
            # Auth: no token, wrong token.
            assert client.get("/models").status_code == 401
            assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            # Bad parameters are named; unknown archives are 404.
            bad = client.post("/models?url=x.mar&batch_size=abc", headers=AUTH)
            assert bad.status_code == 400 and "batch_size" in bad.json()["message"]
            assert client.post("/models?url=nosuch.mar", headers=AUTH).status_code == 404
            assert client.post("/models?url=../../etc/passwd", headers=AUTH).status_code == 400

            started = time.monotonic()
            registered = _register(client, "url=resnet18_v1.0.mar&model_name=resnet18&batch_size=4")
            assert registered.status_code == 200, registered.text
            first = client.put("/predictions/resnet18", content=cat_png)
            print(f"\nregister -> first prediction (resnet18): {time.monotonic() - started:.1f}s")
            assert first.status_code == 200 and len(first.json()) == 5
            assert first.headers["x-model-version"] == "1.0"

            duplicate = _register(client, "url=resnet18_v1.0.mar&model_name=resnet18")
            assert duplicate.status_code == 409 and duplicate.json()["type"] == "ConflictStatusException"

            assert _register(client, "url=tiny.zip").status_code == 200
            assert len(client.post("/predictions/tiny", content=cat_png).json()) == 5

            scaled = client.put("/models/resnet18?min_worker=2&synchronous=true", headers=AUTH, timeout=180)
            assert scaled.status_code == 200, scaled.text
            described = client.get("/models/resnet18", headers=AUTH).json()[0]
            assert described["minWorkers"] == 2 and len(described["workers"]) == 2

            assert _register(client, "url=resnet18_v2.0.mar&model_name=resnet18").status_code == 200
            assert client.put("/predictions/resnet18", content=cat_png).headers["x-model-version"] == "1.0"
            assert client.put("/models/resnet18/2.0/set-default", headers=AUTH).status_code == 200
            assert client.put("/predictions/resnet18", content=cat_png).headers["x-model-version"] == "2.0"
            versions = {d["modelVersion"] for d in client.get("/models/resnet18/all", headers=AUTH).json()}
            assert versions == {"1.0", "2.0"}

        # Unregister 1.0 while requests to it and to the default keep flowing: none may hang.
        def hammer(i: int) -> tuple[int, float]:
            path = "/predictions/resnet18/1.0" if i % 2 else "/predictions/resnet18"
            began = time.monotonic()
            with cluster.client(timeout=20) as c:
                return c.put(path, content=cat_png).status_code, time.monotonic() - began

        with ThreadPoolExecutor(max_workers=8) as pool:
            burst = [pool.submit(hammer, i) for i in range(120)]
            time.sleep(1.0)
            with cluster.client() as client:
                removed = client.delete("/models/resnet18/1.0", headers=AUTH, timeout=60)
            outcomes = [f.result() for f in burst]
        assert removed.status_code == 200, removed.text
        assert {status for status, _ in outcomes} <= {200, 404, 503}, outcomes
        assert max(seconds for _, seconds in outcomes) < 15
        with cluster.client() as client:
            gone = client.put("/predictions/resnet18/1.0", content=cat_png)
            assert gone.status_code in (404, 503)
            assert client.put("/predictions/resnet18", content=cat_png).status_code == 200

    # A full stop and start brings every registered model and the default version back.
    with serve_run(setup["config"], extra_env=setup["env"]) as cluster:
        _up(cluster)

        def restored() -> bool:
            with cluster.client() as client:
                return all(
                    client.put(f"/predictions/{m}", content=cat_png).status_code == 200
                    for m in ("resnet18", "tiny")
                )

        cluster.wait_for(restored, timeout=180, what="registered models to come back")
        with cluster.client() as client:
            assert client.put("/predictions/resnet18", content=cat_png).headers["x-model-version"] == "2.0"
            names = {m["modelName"] for m in client.get("/models", headers=AUTH).json()["models"]}
            assert names == {"resnet18", "tiny"}
        state = Path(setup["env"]["RAYTORCH_STATE_DIR"])  # one database holds it all
        assert (state / "state.db").is_file() and not (state / "registry.json").exists()
