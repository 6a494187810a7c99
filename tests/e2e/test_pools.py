"""Model pools and traffic control on a real `serve run`.

One server with a pool that holds at most two models per replica:
- models registered into the pool are predicted on (TorchServe, KServe v1, OIP v2 routes),
  evicted when a third one is needed, and reloaded, and the metrics count it per model;
- a 90/10 canary split lands within 5 points of its weights over 400 requests, and a shadow
  version gets its copies while clients only see the default's answers;
- pooled models explain and stream as dedicated ones do (a TorchServe streaming handler too);
- switching the default version while requests flow fails none of them;
- requests alternating over more models than a replica holds get 503 with Retry-After at once
  past the pool's cold-load ration, while the models the replica holds keep answering.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run, trust_test_fixtures
from tests.fixtures import torchserve_archives as archives
from tests.fixtures.pooled import small_jpeg, tiny_archive

pytestmark = pytest.mark.e2e

TOKEN = "e2e-pools-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = small_jpeg()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    root = tmp_path_factory.mktemp("pools")
    store = root / "store"
    store.mkdir()
    for seed, name in enumerate(("a", "b", "c", "explained")):
        tiny_archive(store, name, "1.0", seed)
    for name in ("canary", "switch"):
        tiny_archive(store, name, "1.0", 10)
        tiny_archive(store, name, "2.0", 11)
    archives.build_handler_only(store, root / "echo", "echo_stream", "1.0", archives.ECHO_STREAM, "echo.py")
    config = load_config("model_pool.yaml")
    pool = next(a for a in config["applications"] if a["name"] == "pool-small")
    pool["args"]["max_models_per_replica"] = 2
    # A small cold-load ration, so that the thrash test reaches it quickly; the other tests'
    # cold loads (five in a row at most) fit in the burst.
    pool["args"].update(cold_loads_per_s=1.0, cold_load_burst=6)
    pool["args"]["resources"] = {"num_replicas": 1, "num_cpus": 0.5}
    management = next(a for a in config["applications"] if a["name"] == "management")
    management["args"]["default_pool"] = None  # registrations below name their pool
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_TOKEN": TOKEN,
    }
    with serve_run(trust_test_fixtures(config), extra_env=env) as running:

        def pool_ready() -> bool:
            with running.client() as client:
                return (
                    client.get("/ping").status_code == 200 and client.get("/models", headers=AUTH).is_success
                )

        running.wait_for(pool_ready, timeout=240, what="the pool and the management API")
        yield running


def register(client: httpx.Client, name: str, version: str) -> None:
    answer = client.post(f"/models?url={name}-{version}.zip&pool=small", headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text


def predict(client: httpx.Client, path: str) -> httpx.Response:
    return client.post(path, content=IMAGE, headers={"content-type": "image/jpeg"})


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_pooled_models_are_loaded_on_demand_evicted_and_reloaded(cluster: ServeCluster) -> None:
    with cluster.client() as client:
        for name in ("a", "b", "c"):
            register(client, name, "1.0")
        described = client.get("/models/a", headers=AUTH).json()[0]
        assert described["pool"] == "small" and described["loadedOn"] == []  # a file, not a process

        first = predict(client, "/predictions/a")
        assert first.status_code == 200 and first.headers["x-model-version"] == "1.0", first.text
        assert len(first.json()) == 3
        assert client.get("/models/a", headers=AUTH).json()[0]["loadedOn"] != []
        # TorchServe's describe fields come from the pool; a pool replica describes the handler.
        loaded = client.get("/models/a?customized=true", headers=AUTH).json()[0]
        assert [w["loaded"] for w in loaded["workers"]] == [True], loaded
        assert "pendingRequests" in loaded["jobQueueStatus"], loaded
        assert loaded["customizedMetadata"]["pool"] == "small", loaded
        # The same model through the other protocols.
        encoded = base64.b64encode(IMAGE).decode()
        v1 = client.post("/v1/models/a:predict", json={"instances": [{"b64": encoded}]})
        assert v1.status_code == 200 and len(v1.json()["predictions"]) == 1
        v2 = client.post(
            "/v2/models/a/infer",
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [encoded]}]},
        )
        assert v2.status_code == 200 and v2.json()["model_version"] == "1.0", v2.text
        metadata = client.get("/v2/models/a")  # the pool replica reads the model's signature
        assert metadata.status_code == 200 and metadata.json()["name"] == "a", metadata.text

        # Two models fit per replica: b then c push a out, least recently used first.
        assert predict(client, "/predictions/b").status_code == 200
        assert predict(client, "/predictions/c").status_code == 200
        assert client.get("/models/a", headers=AUTH).json()[0]["loadedOn"] == []
        assert metric(client, "raytorch_pool_evictions_total", model_name="a") == 1
        assert metric(client, "raytorch_pool_loads_total", model_name="a") == 1

        again = predict(client, "/predictions/a")
        assert again.status_code == 200 and again.json() == first.json()  # its own weights, reloaded
        assert metric(client, "raytorch_pool_loads_total", model_name="a") == 2
        assert metric(client, "raytorch_pool_load_seconds_total", model_name="a") > 0
        assert metric(client, "raytorch_pool_models_loaded", pool="small") == 2  # hot models per replica
        assert predict(client, "/predictions/b").json() != first.json()  # distinct models

        # Unregistered: gone from routing and from the replica.
        assert client.delete("/models/c", headers=AUTH, timeout=60).status_code == 200
        assert predict(client, "/predictions/c").status_code == 404


def test_pooled_models_explain_and_stream(cluster: ServeCluster) -> None:
    with cluster.client() as client:
        register(client, "explained", "1.0")
        answer = client.post("/models?url=echo_stream.mar&pool=small", headers=AUTH, timeout=120)
        assert answer.status_code == 200, answer.text
        explained = client.post(
            "/explanations/explained?n_steps=4",
            content=IMAGE,
            headers={"content-type": "image/jpeg"},
        )
        assert explained.status_code == 200, explained.text
        attributions = explained.json()
        assert len(attributions) == 3 and len(attributions[0]) > 1  # [C][H][W] at the input resolution
        assert len({len(row) for row in attributions[0]}) == 1
        sse = {"accept": "text/event-stream"}
        with client.stream("POST", "/predictions/echo_stream", content=b"42", headers=sse) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if line.startswith("data:")]
        assert events == ["data: hello"] * 3 + ["data: hello world "]
        chunked = client.post("/predictions/echo_stream?stream=true", content=b"42")
        assert chunked.text == "hellohellohellohello world "
        assert client.delete("/models/echo_stream", headers=AUTH, timeout=60).status_code == 200


def test_a_canary_split_lands_on_its_weights_and_a_shadow_gets_copies(cluster: ServeCluster) -> None:
    with cluster.client() as client:
        register(client, "canary", "1.0")
        register(client, "canary", "2.0")
        split = client.put("/models/canary/traffic?split=1.0:90,2.0:10", headers=AUTH, timeout=60)
        assert split.status_code == 200, split.text
        assert split.json()["split"] == {"1.0": 90.0, "2.0": 10.0}

    def one(_: int) -> str:
        with cluster.client() as c:
            answer = predict(c, "/predictions/canary")
            return answer.headers.get("x-model-version", str(answer.status_code))

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = Counter(pool.map(one, range(400)))
    assert set(versions) == {"1.0", "2.0"}, versions
    assert abs(versions["2.0"] / 400 - 0.10) <= 0.05, versions

    with cluster.client() as client:
        described = {
            d["modelVersion"]: d["trafficPercent"]
            for d in client.get("/models/canary/all", headers=AUTH).json()
        }
        assert described == {"1.0": 90.0, "2.0": 10.0}
        assert (
            metric(client, "raytorch_traffic_percent", model_name="canary", model_version="2.0", kind="live")
            == 10
        )
        # A shadow: clients are answered by the default, the shadow gets half the requests as copies.
        shadow = client.put("/models/canary/traffic?shadow=2.0&shadow_percent=50", headers=AUTH, timeout=60)
        assert shadow.status_code == 200 and shadow.json()["split"] == {"1.0": 100.0}, shadow.text
        assert {predict(client, "/predictions/canary").headers["x-model-version"] for _ in range(40)} == {
            "1.0"
        }
        time.sleep(1.0)
        copies = metric(client, "raytorch_shadow_requests_total", model_name="canary", model_version="2.0")
        assert copies == 20
        assert client.delete("/models/canary/traffic", headers=AUTH, timeout=60).json()["shadow"] is None


def test_switching_the_default_under_load_fails_no_request(cluster: ServeCluster) -> None:
    with cluster.client() as client:
        register(client, "switch", "1.0")
        register(client, "switch", "2.0")
        assert client.put("/models/switch/1.0/set-default", headers=AUTH, timeout=60).status_code == 200
    stop = threading.Event()
    switched_at: list[float] = []
    outcomes: list[tuple[float, int, str]] = []  # (sent at, status, version)

    def load() -> None:
        with cluster.client(timeout=30) as c:
            while not stop.is_set():
                sent = time.monotonic()
                answer = predict(c, "/predictions/switch")
                outcomes.append((sent, answer.status_code, answer.headers.get("x-model-version", "")))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        with cluster.client() as client:
            switched = client.put("/models/switch/2.0/set-default", headers=AUTH, timeout=60)
        switched_at.append(time.monotonic())
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert switched.status_code == 200, switched.text
    statuses = Counter(status for _, status, _ in outcomes)
    assert statuses == {200: len(outcomes)} and len(outcomes) > 50, statuses
    assert {v for sent, _, v in outcomes if sent < switched_at[0] - 2.5} == {"1.0"}
    assert {v for sent, _, v in outcomes if sent > switched_at[0]} == {
        "2.0"
    }  # answered once set-default returns


def test_a_pool_thrashed_by_cold_loads_refuses_them_at_once_and_keeps_serving_its_models(
    cluster: ServeCluster,
) -> None:
    with cluster.client() as client:
        for name in ("a", "b", "c"):  # three models, two per replica
            if client.get(f"/models/{name}", headers=AUTH).status_code == 404:
                register(client, name, "1.0")
        refused: list[tuple[httpx.Response, float]] = []
        for index in range(150):
            sent = time.monotonic()
            answer = predict(client, f"/predictions/{'abc'[index % 3]}")
            assert answer.status_code in (200, 503), answer.text
            if answer.status_code == 503:
                refused.append((answer, time.monotonic() - sent))
        assert refused, "alternating over 3 models with room for 2 never reached the cold-load ration"
        answer, seconds = refused[-1]
        assert seconds < 1.0  # answered at once, not after a load
        assert int(answer.headers["Retry-After"]) >= 1
        assert "Pool small is saturated" in answer.json()["message"], answer.text
        # Meanwhile the models the replica holds answer every request.
        held = [n for n in "abc" if client.get(f"/models/{n}", headers=AUTH).json()[0]["loadedOn"]]
        assert len(held) == 2, held
        assert {predict(client, f"/predictions/{n}").status_code for n in held * 10} == {200}
