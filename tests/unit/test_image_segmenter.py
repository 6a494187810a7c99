"""The image_segmenter handler: a PNG mask at each photo's own size, and class shares."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as nnf

import handlers.image_segmenter as segmenter_module
from handlers.errors import BadInputError, ConfigError, UnsupportedMediaTypeError
from handlers.handler_catalog import create_handler
from handlers.image_segmenter import ImageSegmenter, upsampled_argmax
from handlers.spec import ModelSpec


def segmenter_spec(**overrides: object) -> ModelSpec:
    data: dict[str, object] = {
        "name": "segmenter",
        "handler": "image_segmenter",
        "source": {"architecture": "lraspp_mobilenet_v3_large", "weights": None},
        "preprocess": {"resize": 96, "crop": None},
        "warmup": False,
    }
    data.update(overrides)
    return ModelSpec.model_validate(data)


@pytest.fixture(scope="module")
def segmenter() -> ImageSegmenter:
    torch.manual_seed(0)
    handler = create_handler(segmenter_spec(options={"raw_probabilities": True, "probabilities_size": 16}))
    handler.load()
    assert isinstance(handler, ImageSegmenter)
    return handler


@pytest.fixture(scope="module")
def answers(segmenter: ImageSegmenter, cat_png: bytes, coffee_png: bytes) -> list[dict]:
    return segmenter.predict_batch([segmenter.preprocess(cat_png), segmenter.preprocess(coffee_png)])


def decode_mask(answer: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(answer["mask_png"])))


def test_mask_is_a_png_of_each_photo_size(answers: list[dict], cat_png: bytes, coffee_png: bytes) -> None:
    for answer, png in zip(answers, (cat_png, coffee_png), strict=True):
        size = Image.open(io.BytesIO(png)).size
        mask = decode_mask(answer)
        assert mask.format == "PNG" and mask.mode == "L" and mask.size == size
        assert (answer["width"], answer["height"]) == size


def test_classes_match_the_mask_and_shares_sum_to_one(answers: list[dict]) -> None:
    for answer in answers:
        classes = answer["classes"]
        shares = [c["pixel_share"] for c in classes]
        assert shares == sorted(shares, reverse=True)
        assert sum(shares) == pytest.approx(1.0, abs=1e-4)
        histogram = decode_mask(answer).histogram()
        assert {c["index"] for c in classes} == {i for i, n in enumerate(histogram) if n}
        pixels = answer["width"] * answer["height"]
        for c in classes:
            assert c["pixel_share"] == pytest.approx(histogram[c["index"]] / pixels, abs=1e-6)
            assert c["label"] == str(c["index"])  # random weights carry no category names


def test_raw_probabilities_are_a_bounded_grid(answers: list[dict]) -> None:
    for answer in answers:
        grid = answer["probabilities"]
        assert max(grid["width"], grid["height"]) == 16
        assert len(grid["labels"]) == len(grid["values"]) == 21
        planes = torch.tensor(grid["values"])
        assert planes.shape == (21, grid["height"], grid["width"])
        assert torch.allclose(planes.sum(0), torch.ones(grid["height"], grid["width"]), atol=1e-2)


def test_answer_does_not_depend_on_batch_mates(
    segmenter: ImageSegmenter, answers: list[dict], cat_png: bytes
) -> None:
    alone = segmenter.predict(cat_png)
    assert alone["mask_png"] == answers[0]["mask_png"]
    assert alone["classes"] == answers[0]["classes"]


def test_probabilities_are_off_by_default(segmenter: ImageSegmenter, cat_png: bytes) -> None:
    plain = create_handler(segmenter_spec())
    plain.model, plain.labels = segmenter.model, segmenter.labels
    assert set(plain.predict(cat_png)) == {"width", "height", "classes", "mask_png"}


def test_banded_upsampling_equals_full_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 12, 9)
    monkeypatch.setattr(segmenter_module, "_BAND_VALUES", 5 * 53 * 4)  # 4 rows per band
    expected = nnf.interpolate(logits[None], size=(37, 53), mode="bilinear", align_corners=False)[0]
    assert torch.equal(upsampled_argmax(logits, 37, 53), expected.argmax(0))


def test_bad_inputs_fail_alone(segmenter: ImageSegmenter, cat_png: bytes) -> None:
    with pytest.raises(BadInputError):
        segmenter.preprocess(b"")
    with pytest.raises(UnsupportedMediaTypeError):
        segmenter.preprocess(cat_png, "application/json")


def test_config_errors_are_named() -> None:
    with pytest.raises(ConfigError, match=r"preprocess\.resize"):
        create_handler(segmenter_spec(preprocess={"resize": None}))
    with pytest.raises(ConfigError, match="raw_probs"):
        create_handler(segmenter_spec(options={"raw_probs": True}))


@pytest.mark.parametrize("kind", ["probability", "logit"])
def test_one_channel_models_segment_foreground_from_background(kind: str, cat_png: bytes) -> None:
    handler = create_handler(
        segmenter_spec(
            source={
                "factory": "tests.fixtures.models:ramp_segmenter",
                "factory_kwargs": {"logits": kind == "logit"},
            },
            options={"single_channel_output": kind, "raw_probabilities": True, "probabilities_size": 8},
        )
    )
    handler.load()
    answer = handler.predict(cat_png)
    mask = torch.from_numpy(np.array(decode_mask(answer)))
    # The right half of the photo is over 0.5: foreground (class 1), the left half background.
    assert mask[:, :220].max() == 0 and mask[:, 231:].min() == 1
    assert {c["index"]: c["pixel_share"] for c in answer["classes"]} == pytest.approx(
        {0: 0.5, 1: 0.5}, abs=0.01
    )
    background, foreground = torch.tensor(answer["probabilities"]["values"])
    assert torch.allclose(background + foreground, torch.ones(5, 8), atol=1e-3)
    assert foreground[0].tolist() == pytest.approx([(i + 0.5) / 8 for i in range(8)], abs=0.02)
