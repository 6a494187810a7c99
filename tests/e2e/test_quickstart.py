"""The quickstart story on a real `serve run`: real labels, bad input, batching, over HTTP."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import BODY_LIMIT
from tests.e2e.serve_cluster import ServeCluster

pytestmark = pytest.mark.e2e


def test_cat_and_coffee_get_real_labels(quickstart: ServeCluster, cat_png: bytes, coffee_png: bytes) -> None:
    with quickstart.client() as client:
        cat = client.put("/predictions/efficientnet_lite0", content=cat_png)  # curl -T
        coffee = client.post("/predictions/efficientnet_lite0/1.0", files={"data": ("c.png", coffee_png)})
    assert cat.status_code == 200 and coffee.status_code == 200
    cat_labels = cat.json()
    assert len(cat_labels) == 5
    assert next(iter(cat_labels)) in {"tiger cat", "Egyptian cat", "tabby"}
    assert list(cat_labels.values()) == sorted(cat_labels.values(), reverse=True)
    assert next(iter(coffee.json())) in {"espresso", "cup", "coffee mug"}
    assert cat.headers["x-request-id"] != coffee.headers["x-request-id"]


def _truncated_jpeg(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()[:4000]


def test_bad_inputs_fail_alone_while_batch_mates_succeed(quickstart: ServeCluster, cat_png: bytes) -> None:
    bad = {
        "not an image": (b"hello, world", None, 400),
        "empty": (b"", None, 400),
        "truncated jpeg": (_truncated_jpeg(cat_png), "image/jpeg", 400),
        "json": (json.dumps({"instances": [1]}).encode(), "application/json", 415),
        "too large": (b"\0" * (BODY_LIMIT + 1), None, 413),
    }
    jobs = [("good", cat_png, None, 200)] * 12 + [(k, *v) for k, v in bad.items()]

    def send(job: tuple) -> tuple[str, httpx.Response]:
        name, body, content_type, _ = job
        headers = {"content-type": content_type} if content_type else {}
        with quickstart.client() as client:
            return name, client.post("/predictions/efficientnet_lite0", content=body, headers=headers)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for (name, response), job in zip(results, jobs, strict=True):
        assert response.status_code == job[3], f"{name}: {response.text}"
        if job[3] != 200:
            body = response.json()
            assert body["code"] == job[3] and body["message"], name
            assert "Traceback" not in response.text
        else:
            assert next(iter(response.json())) in {"tiger cat", "Egyptian cat", "tabby"}
    # The replica survived: the next request is answered normally.
    with quickstart.client() as client:
        assert client.put("/predictions/efficientnet_lite0", content=cat_png).status_code == 200


def test_concurrent_requests_form_batches(quickstart: ServeCluster, cat_png: bytes) -> None:
    def send(_: int) -> httpx.Response:
        with quickstart.client() as client:
            return client.post("/predictions/efficientnet_lite0", content=cat_png)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(send, range(64)))
    assert all(r.status_code == 200 for r in responses)
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert max(sizes) > 1, f"no batch formed under concurrency 16: {sizes}"


def test_unknown_model_health_and_api_description(quickstart: ServeCluster, cat_png: bytes) -> None:
    with quickstart.client() as client:
        missing = client.post("/predictions/nosuch", content=cat_png)
        assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"
        assert client.get("/ping").json() == {"status": "Healthy"}
        paths = client.get("/api-description").json()["paths"]
        assert "/predictions/{model_name}/{model_version}" in paths


def test_cli_predict_prints_top_labels(quickstart: ServeCluster) -> None:
    """The blog's query.sh experience: `raytorch predict IMAGE` prints 'label: percent' lines."""
    import subprocess
    import sys

    from tests.fixtures.specs import photo_path

    result = subprocess.run(
        [sys.executable, "-m", "raytorch.cli", "--server", quickstart.base_url, "predict",
         str(photo_path("chelsea.png")), "--model", "efficientnet_lite0", "--top", "3"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].split(":")[0] in {"tiger cat", "Egyptian cat", "tabby"} and lines[0].endswith("%")
