"""Explanations of the quickstart's EfficientNet-Lite0 on the shared quickstart server: the
Integrated Gradients map at the model's input resolution over TorchServe's and KServe's
routes, the heat map, the step bound, and predictions answered while an explanation runs."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.e2e.serve_cluster import ServeCluster

pytestmark = pytest.mark.e2e
MODEL = "efficientnet_lite0"


def test_image_explanation_is_a_map_at_input_resolution(quickstart: ServeCluster, cat_png: bytes) -> None:
    with quickstart.client(timeout=120) as client:
        answer = client.put(f"/explanations/{MODEL}?n_steps=8", content=cat_png)  # curl -T
        assert answer.status_code == 200, answer.text
        attributions = answer.json()
        assert (len(attributions), len(attributions[0]), len(attributions[0][0])) == (3, 224, 224)
        assert any(value != 0 for value in attributions[0][112])

        instances = {"instances": [{"b64": base64.b64encode(cat_png).decode()}]}
        v1 = client.post(f"/v1/models/{MODEL}:explain?n_steps=8&target=tabby", json=instances)
        assert v1.status_code == 200, v1.text
        (explained,) = v1.json()["explanations"]
        assert len(explained) == 3 and len(explained[2]) == 224

        png = client.post(
            f"/explanations/{MODEL}/1.0?n_steps=8", content=cat_png, headers={"accept": "image/png"}
        )
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (224, 224)

        too_many = client.post(f"/explanations/{MODEL}?n_steps=5000", content=cat_png)
        assert too_many.status_code == 400 and "n_steps" in too_many.json()["message"]
        assert client.put("/explanations/nosuch", content=cat_png).status_code == 404


def test_predictions_are_answered_while_an_explanation_runs(quickstart: ServeCluster, cat_png: bytes) -> None:
    explained = threading.Event()
    status: dict[str, int] = {}

    def explain() -> None:
        with httpx.Client(base_url=quickstart.base_url, timeout=120) as client:
            status["code"] = client.put(f"/explanations/{MODEL}?n_steps=64", content=cat_png).status_code
        explained.set()

    thread = threading.Thread(target=explain)
    thread.start()
    try:
        time.sleep(1.5)  # the explanation's chunks (8 of 8 steps) are running on the replica
        with quickstart.client(timeout=120) as client:
            prediction = client.put(f"/predictions/{MODEL}", content=cat_png)
        answered_meanwhile = not explained.is_set()
    finally:
        thread.join(timeout=150)
    assert prediction.status_code == 200, prediction.text
    assert status.get("code") == 200
    assert answered_meanwhile  # the prediction waited for a chunk, not for the whole explanation
