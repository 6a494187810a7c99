"""The image_classifier handler: real labels from real weights, TorchServe's output shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from handlers.errors import BadInputError, ConfigError
from handlers.handler_catalog import create_handler, handler_class
from handlers.image_classifier import ImageClassifier
from handlers.spec import ModelSpec
from tests.fixtures.specs import quickstart_model_args, tiny_spec


@pytest.fixture(scope="module")
def efficientnet() -> ImageClassifier:
    handler = create_handler(ModelSpec.model_validate(quickstart_model_args()["model"]))
    handler.load()
    return handler


def test_cat_photo_is_a_cat(efficientnet: ImageClassifier, cat_png: bytes) -> None:
    result = efficientnet.predict(cat_png, "image/png")
    top = next(iter(result))
    assert top in {"tiger cat", "Egyptian cat", "tabby"}
    assert len(result) == 5
    probabilities = list(result.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0001


def test_coffee_photo_is_coffee(efficientnet: ImageClassifier, coffee_png: bytes) -> None:
    assert next(iter(efficientnet.predict(coffee_png))) in {"espresso", "cup", "coffee mug"}


def test_jpeg_and_png_of_the_same_photo_agree(
    efficientnet: ImageClassifier, cat_png: bytes, cat_jpeg: bytes
) -> None:
    assert next(iter(efficientnet.predict(cat_jpeg))) == next(iter(efficientnet.predict(cat_png)))


def test_batch_matches_single_requests(
    efficientnet: ImageClassifier, cat_png: bytes, coffee_png: bytes
) -> None:
    """Images of different sizes batch together, and batching does not change answers."""
    items = [efficientnet.preprocess(cat_png), efficientnet.preprocess(coffee_png)]
    batch = efficientnet.predict_batch(items)
    singles = [efficientnet.predict_batch([item])[0] for item in items]
    assert [list(r) for r in batch] == [list(r) for r in singles]
    for got, want in zip(batch, singles, strict=True):
        for label in want:
            assert got[label] == pytest.approx(want[label], abs=1e-4)


def test_index_to_name_labels_in_both_torchserve_formats(tmp_path: Path, cat_png: bytes) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({str(i): f"class-{i}" for i in range(10)}))
    synset = tmp_path / "synset.json"
    synset.write_text(json.dumps({str(i): [f"n{i:08d}", f"class-{i}"] for i in range(10)}))
    for path in (plain, synset):
        handler = create_handler(tiny_spec(labels=str(path)))
        handler.load()
        result = handler.predict(cat_png)
        assert len(result) == 3 and all(label.startswith("class-") for label in result)


def test_without_labels_indices_are_returned(cat_png: bytes) -> None:
    handler = create_handler(tiny_spec())
    handler.load()
    assert all(label.isdigit() for label in handler.predict(cat_png))


def test_bad_input_fails_before_batching() -> None:
    handler = create_handler(tiny_spec())
    handler.load()
    with pytest.raises(BadInputError):
        handler.preprocess(b"GIF89a but not really")


def test_unknown_handler_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="image_classifier"):
        handler_class("imag_classifier")


def test_handler_must_subclass_base_handler() -> None:
    with pytest.raises(ConfigError, match="BaseHandler"):
        handler_class("tests.fixtures.models:TinyClassifier")


def test_unknown_handler_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        create_handler(tiny_spec(options={"threshold": 0.5}))


def test_batches_are_normalised_like_torchvision_and_channels_last_changes_no_answer(
    cat_png: bytes, coffee_png: bytes
) -> None:
    from torchvision.transforms.v2 import functional as F

    from handlers.image_io import decode_image

    spec = tiny_spec(preprocess={"resize": 64, "crop": 56, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]})
    fast, plain = create_handler(spec), create_handler(spec.model_copy(update={"channels_last": False}))
    for handler in (fast, plain):
        handler.load()
    assert fast.channels_last and not plain.channels_last
    item = fast.preprocess(cat_png)
    assert item.dtype == torch.uint8 and tuple(item.shape) == (3, 56, 56)  # normalised per batch
    resized = F.center_crop(F.resize(decode_image(cat_png, 10**8), [64]), [56])  # on the PIL image
    reference = F.normalize(
        F.to_dtype(F.pil_to_tensor(resized), torch.float32, scale=True),
        mean=[0.4, 0.5, 0.6],
        std=[0.2, 0.25, 0.3],
    )
    assert torch.allclose(fast.collate([item])[0], reference, atol=1e-5)
    batch = [fast.preprocess(cat_png), fast.preprocess(coffee_png)]
    assert fast.predict_batch(batch) == plain.predict_batch(batch)


SIZES = [(500, 375, 256, 224), (375, 500, 256, 224), (60, 40, 64, 56), (224, 224, 256, 224),
         (300, 100, None, 224), (31, 17, 20, 15)]  # fmt: skip


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize(("width", "height", "resize", "crop"), SIZES)
def test_preprocessing_matches_torchvision_pixel_for_pixel(
    interpolation: str, width: int, height: int, resize: int | None, crop: int
) -> None:
    # The handler no longer imports torchvision (seconds of replica start); its answers must
    # not change because of that.
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from handlers.image_ops import center_crop, resize_shorter_side, to_uint8_tensor

    gradient = torch.arange(width * height * 3, dtype=torch.int64).reshape(height, width, 3) % 251
    image = Image.fromarray(gradient.to(torch.uint8).numpy(), "RGB")
    expected, ours = image, image
    if resize:
        expected = F.resize(
            expected, [resize], interpolation=InterpolationMode(interpolation), antialias=True
        )
        ours = resize_shorter_side(ours, resize, interpolation)
    expected = F.pil_to_tensor(F.center_crop(expected, [crop, crop]))
    assert torch.equal(to_uint8_tensor(center_crop(ours, crop)), expected)
