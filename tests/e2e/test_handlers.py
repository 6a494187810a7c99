"""One server, one model of every default handler, plus a custom handler registered at runtime.

Shapes and invariants over real HTTP (random weights: no made-up labels are asserted).
"""

from __future__ import annotations

import base64
import io
import shutil

import pytest
import torch
from PIL import Image

from handlers.archive import write_archive
from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run
from tests.fixtures.audio import make_wav, sine
from tests.fixtures.models import tiny_classifier

pytestmark = pytest.mark.e2e
TOKEN = "e2e-handlers-token"
CUSTOM = "tests/fixtures/custom_handlers/shouting_classifier.py"


def _model_app(config_name: str, **model_changes: object) -> dict:
    app = next(
        a for a in load_config(config_name)["applications"] if a["name"] not in ("ingress", "management")
    )
    app["args"]["resources"]["num_cpus"] = 0.25  # five models on two CPUs
    app["args"]["model"].update(model_changes)
    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServeCluster:
    root = tmp_path_factory.mktemp("handlers")
    store = root / "store"
    store.mkdir()
    torch.save(tiny_classifier().state_dict(), root / "tiny.pth")
    shutil.copy(CUSTOM, root / "shouting.py")
    spec = {
        "name": "shouting",
        "handler": "shouting.py:ShoutingClassifier",  # a .py file shipped inside the archive
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "tiny.pth"},
        "preprocess": {"resize": 64, "crop": 56},
    }
    write_archive(spec, [root / "tiny.pth", root / "shouting.py"], store / "shouting.zip")

    base = load_config("quickstart.yaml")
    apps = [a for a in base["applications"] if a["name"] in ("ingress", "management")]
    apps += [
        _model_app("object_detector.yaml"),
        _model_app("image_segmenter.yaml", preprocess={"resize": 128}),
        _model_app("text_classifier.yaml"),
        _model_app("audio_classifier.yaml"),
    ]
    base["applications"] = apps
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_TOKEN": TOKEN,
    }
    with serve_run(base, extra_env=env) as running:

        def all_up() -> bool:
            with running.client() as client:
                return client.get("/ping").status_code == 200  # every model has a ready replica

        running.wait_for(all_up, timeout=300, what="every handler's model")
        yield running


def _names() -> dict[str, str]:
    """Handler name -> model name in the shipped example configs."""
    return {
        a["args"]["model"]["handler"]: a["args"]["model"]["name"]
        for a in load_config_apps()
        if a["import_path"].endswith("build_model")
    }


def load_config_apps() -> list[dict]:
    apps = []
    for name in (
        "object_detector.yaml",
        "image_segmenter.yaml",
        "text_classifier.yaml",
        "audio_classifier.yaml",
    ):
        apps += load_config(name)["applications"]
    return apps


def test_every_handler_answers_in_its_shape(server: ServeCluster, cat_png: bytes) -> None:
    names = _names()
    with server.client() as client:
        detections = client.put(f"/predictions/{names['object_detector']}", content=cat_png)
        assert detections.status_code == 200, detections.text
        for box in detections.json():
            (label, coords), score = next((k, v) for k, v in box.items() if k != "score"), box["score"]
            x1, y1, x2, y2 = coords
            assert 0 <= x1 <= x2 <= 451 and 0 <= y1 <= y2 <= 300 and 0 <= score <= 1, label

        segments = client.put(f"/predictions/{names['image_segmenter']}", content=cat_png)
        assert segments.status_code == 200, segments.text
        seg = segments.json()
        assert (seg["width"], seg["height"]) == (451, 300)
        assert Image.open(io.BytesIO(base64.b64decode(seg["mask_png"]))).size == (451, 300)
        assert abs(sum(c["pixel_share"] for c in seg["classes"]) - 1) < 1e-3

        text = client.post(
            f"/predictions/{names['text_classifier']}",
            json={"text": "what a wonderful, delightful film"},
        )
        assert text.status_code == 200, text.text
        assert 0 < sum(text.json().values()) <= 1.0001

        wav = make_wav([sine(440, 16000, 1.0)], 16000)
        audio = client.post(f"/predictions/{names['audio_classifier']}", content=wav)
        assert audio.status_code == 200, audio.text
        assert list(audio.json().values()) == sorted(audio.json().values(), reverse=True)

        # Each handler refuses what is not its kind of input, alone, with a 4xx.
        assert client.post(f"/predictions/{names['audio_classifier']}", content=cat_png).status_code == 400
        assert (
            client.post(f"/predictions/{names['text_classifier']}", content=b"\xff\xfe\xfa").status_code
            == 400
        )


def test_custom_handler_archive_registers_and_answers(server: ServeCluster, cat_png: bytes) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client(timeout=180) as client:
        registered = client.post("/models?url=shouting.zip&num_cpus=0.25", headers=auth)
        assert registered.status_code == 200, registered.text
        result = client.put("/predictions/shouting", content=cat_png).json()
        assert len(result) == 5 and all(label.startswith("LABEL-") for label in result)
