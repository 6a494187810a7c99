"""The shipped configs of the non-classifier handlers load offline and answer in their shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from handlers.registry import create_handler
from handlers.spec import ModelSpec
from tests.fixtures.audio import make_wav, sine
from tests.fixtures.specs import ROOT

CONFIGS = ["object_detector.yaml", "image_segmenter.yaml", "text_classifier.yaml", "audio_classifier.yaml"]


def model_spec(config: Path) -> ModelSpec:
    raw = yaml.safe_load(config.read_text())
    (app,) = (a for a in raw["applications"] if a["import_path"].endswith(":build_model"))
    return ModelSpec.model_validate(app["args"]["model"])


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_loads_and_answers(name: str, cat_png: bytes) -> None:
    spec = model_spec(ROOT / "configs" / name)
    assert f"{spec.handler}.yaml" == name
    if spec.handler == "image_segmenter":
        # DeepLabV3 at the config's 520 px takes seconds per pass on a small CPU; the model,
        # weights and options are the shipped ones, only the input square shrinks.
        spec = spec.model_copy(update={"preprocess": spec.preprocess.model_copy(update={"resize": 128})})
    handler = create_handler(spec)
    handler.load()  # includes the warm-up batch
    if spec.handler == "object_detector":
        assert isinstance(handler.predict(cat_png), list)
    elif spec.handler == "image_segmenter":
        assert set(handler.predict(cat_png)) == {"width", "height", "classes", "mask_png"}
    elif spec.handler == "text_classifier":
        assert set(handler.predict(b"a wonderful movie", "text/plain")) == {"negative", "positive"}
    else:
        result = handler.predict(make_wav([sine(440, 44100, 0.5)], 44100), "audio/wav")
        assert len(result) == 5
