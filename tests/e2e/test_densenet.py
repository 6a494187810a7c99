"""The DenseNet-161 config on a real `serve run`: CPU fallback, offline weights, deadlines."""

from __future__ import annotations

import copy
import time

import pytest

from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run

pytestmark = pytest.mark.e2e

INGRESS_TIMEOUT_S = 4


def _model_app(base: dict, name: str, **changes: object) -> dict:
    app = copy.deepcopy(base)
    app["name"] = name
    app["args"]["model"]["name"] = name
    app["args"]["resources"]["num_cpus"] = 0.5  # three models must fit on a 2-CPU machine
    app["args"]["resources"]["num_replicas"] = 1
    for key, value in changes.items():
        app["args"]["model"][key] = value
    return app


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> ServeCluster:
    config = load_config("densenet.yaml")
    apps = {a["name"]: a for a in config["applications"]}
    ingress, densenet = apps["ingress"], apps["densenet161"]
    ingress["args"]["request_timeout_s"] = INGRESS_TIMEOUT_S
    random_weights = _model_app(densenet, "densenet161")
    random_weights["args"]["model"]["source"]["weights"] = None
    random_weights["args"]["model"]["labels"] = "imagenet"
    offline = _model_app(densenet, "densenet_offline")  # weights: DEFAULT, empty hub cache
    sleepy = _model_app(
        densenet,
        "sleepy",
        handler="tests.fixtures.handlers:SleepyClassifier",
        source={"factory": "tests.fixtures.models:tiny_classifier"},
        preprocess={"resize": 64, "crop": 56},
    )
    config["applications"] = [ingress, random_weights, offline, sleepy]
    empty_cache = tmp_path_factory.mktemp("torch-home")
    with serve_run(config, extra_env={"TORCH_HOME": str(empty_cache)}) as running:
        yield running


def test_gpu_fraction_on_cpu_cluster_runs_on_cpu_and_says_so(cluster: ServeCluster, cat_png: bytes) -> None:
    def answered() -> bool:
        with cluster.client() as client:
            return client.put("/predictions/densenet161", content=cat_png).status_code == 200

    cluster.wait_for(answered, timeout=240, what="densenet161 with random weights")
    with cluster.client() as client:
        result = client.put("/predictions/densenet161", content=cat_png).json()
    assert len(result) == 5 and all(isinstance(p, float) for p in result.values())
    assert "running it on CPU instead" in cluster.log()


def test_unavailable_weights_fail_fast_with_what_to_do(cluster: ServeCluster, cat_png: bytes) -> None:
    seen: dict = {}

    def failed() -> bool:
        with cluster.client() as client:
            response = client.put("/predictions/densenet_offline", content=cat_png)
        seen.update(status=response.status_code, body=response.json())
        return response.status_code == 503 and "failed to start" in response.json()["message"]

    seconds = cluster.wait_for(failed, timeout=180, what="densenet_offline to fail")
    print(f"\nweights unavailable -> failed model reported after {seconds:.1f}s from serve run start")
    message = seen["body"]["message"]
    assert "torch hub cache" in message and "quickstart" in message
    assert "Traceback" not in message
    with cluster.client() as client:
        ping = client.get("/ping")
    assert ping.status_code == 500 and "densenet_offline/1.0" in ping.json()["models"]


def test_slow_model_gets_504_not_a_hang(cluster: ServeCluster, cat_png: bytes) -> None:
    def sleepy_ready() -> bool:
        # /ping stays 500 here (densenet_offline never loads): wait until it no longer names sleepy.
        with cluster.client() as client:
            return "sleepy/1.0" not in client.get("/ping").json().get("models", {})

    cluster.wait_for(sleepy_ready, timeout=180, what="the sleepy model to have a replica")
    started = time.monotonic()
    with cluster.client(timeout=30) as client:
        response = client.put("/predictions/sleepy", content=cat_png)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["type"] == "RequestTimeoutException"
    assert elapsed < INGRESS_TIMEOUT_S + 5
