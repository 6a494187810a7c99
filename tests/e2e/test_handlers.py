"""One server with the real model of every example config, plus a custom handler registered
at runtime: the answers a user would check, over real HTTP."""

from __future__ import annotations

import shutil

import pytest
import torch

from handlers.archive import write_archive
from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run, trust_test_fixtures
from tests.fixtures import real_models as real
from tests.fixtures.models import tiny_classifier
from tests.fixtures.specs import photo_path

pytestmark = pytest.mark.e2e
TOKEN = "e2e-handlers-token"
CUSTOM = "tests/fixtures/custom_handlers/shouting_classifier.py"


def _model_app(config_name: str) -> dict:
    app = next(
        a for a in load_config(config_name)["applications"] if a["name"] not in ("ingress", "management")
    )
    app["args"]["resources"]["num_cpus"] = 0.25  # five models on two CPUs
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

    base = trust_test_fixtures(load_config("quickstart.yaml"))
    apps = [a for a in base["applications"] if a["name"] in ("ingress", "management")]
    apps += [
        _model_app("object_detector.yaml"),
        _model_app("image_segmenter.yaml"),
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


def test_the_example_models_answer_what_they_see(
    server: ServeCluster, cat_png: bytes, coffee_png: bytes
) -> None:
    astronaut = photo_path("astronaut.png").read_bytes()
    with server.client() as client:
        faces = [client.put("/predictions/faces", content=png) for png in (astronaut, coffee_png)]
        assert [r.status_code for r in faces] == [200, 200], faces[0].text
        real.check_astronaut_face(faces[0].json())
        assert faces[1].json() == []

        salient = client.put("/predictions/salient", content=cat_png)
        assert salient.status_code == 200, salient.text
        real.check_cat_mask(salient.json())

        for code, sentence in real.SENTENCES.items():
            answer = client.post(
                "/predictions/language", content=sentence.encode(), headers={"content-type": "text/plain"}
            )
            assert answer.status_code == 200, answer.text
            real.check_language(answer.json(), code)
        as_json = client.post("/predictions/language", json={"text": real.SENTENCES["fr"]})
        real.check_language(as_json.json(), "fr")

        # `curl -T speech.wav`: a PUT of the raw file, as in the README.
        speech = client.put("/predictions/speech", content=real.speech_wav())
        assert speech.status_code == 200, speech.text
        real.check_speech_found(speech.json())
        for clip in (real.noise_wav(), real.silence_wav()):
            real.check_no_speech(client.post("/predictions/speech", content=clip).json())

        # Each handler refuses what is not its kind of input, alone, with a 4xx.
        assert client.post("/predictions/speech", content=cat_png).status_code == 400
        assert client.post("/predictions/language", content=b"\xff\xfe\xfa").status_code == 400
        assert client.post("/predictions/faces", content=real.speech_wav()).status_code == 400


def test_custom_handler_archive_registers_and_answers(server: ServeCluster, cat_png: bytes) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client(timeout=180) as client:
        registered = client.post("/models?url=shouting.zip&num_cpus=0.25", headers=auth)
        assert registered.status_code == 200, registered.text
        result = client.put("/predictions/shouting", content=cat_png).json()
        assert len(result) == 5 and all(label.startswith("LABEL-") for label in result)
