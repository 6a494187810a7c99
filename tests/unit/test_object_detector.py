"""The object_detector handler: TorchServe's box shape, in each photo's own pixel coordinates."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from handlers.errors import BadInputError, ConfigError, PayloadTooLargeError, UnsupportedMediaTypeError
from handlers.handler_catalog import create_handler
from handlers.object_detector import ObjectDetector
from handlers.spec import ModelSpec


def detector_spec(**overrides: object) -> ModelSpec:
    data: dict[str, object] = {
        "name": "detector",
        "handler": "object_detector",
        "source": {"factory": "tests.fixtures.models:tiny_detector"},
        "options": {"score_threshold": 0.0},
        "warmup": False,
    }
    data.update(overrides)
    return ModelSpec.model_validate(data)


@pytest.fixture(scope="module")
def detector() -> ObjectDetector:
    handler = create_handler(detector_spec())
    handler.load()
    assert isinstance(handler, ObjectDetector)
    return handler


def sharing_model(loaded: ObjectDetector, **options: object) -> ObjectDetector:
    """Another detector with other options over the same loaded weights (no second load)."""
    handler = create_handler(detector_spec(options=options))
    assert isinstance(handler, ObjectDetector)
    handler.model, handler.labels = loaded.model, loaded.labels
    return handler


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def check_detections(result: list, width: int, height: int, threshold: float) -> None:
    scores = [d["score"] for d in result]
    assert scores == sorted(scores, reverse=True)
    for detection in result:
        assert len(detection) == 2 and "score" in detection
        ((_, box),) = ((k, v) for k, v in detection.items() if k != "score")
        x1, y1, x2, y2 = box
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert threshold <= detection["score"] <= 1


def test_images_of_different_sizes_share_a_batch(
    detector: ObjectDetector, cat_png: bytes, coffee_png: bytes
) -> None:
    results = detector.predict_batch([detector.preprocess(cat_png), detector.preprocess(coffee_png)])
    assert len(results) == 2
    for result, png in zip(results, (cat_png, coffee_png), strict=True):
        assert result, "the tiny detector scores every box above 0"
        check_detections(result, *size_of(png), threshold=0.0)
    # Without a labels setting, labels are class indices.
    assert all(key.isdigit() for d in results[0] for key in d if key != "score")
    # The coffee photo is larger than the cat photo: its boxes reach past the cat's bounds.
    assert max(d[next(iter(d))][2] for d in results[1]) > size_of(cat_png)[0] * 0.9


def test_threshold_removes_detections_monotonically(detector: ObjectDetector, cat_png: bytes) -> None:
    item = detector.preprocess(cat_png)
    (found,) = detector.inference(detector.collate([item]))
    counts = []
    for threshold in (0.0, 0.2, 0.33, 0.34, 0.4, 0.5, 1.0):
        result = sharing_model(detector, score_threshold=threshold).detections(item, found)
        check_detections(result, *size_of(cat_png), threshold=threshold)
        counts.append(len(result))
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1] == 0


def test_max_detections_caps_the_list(detector: ObjectDetector, cat_png: bytes) -> None:
    handler = sharing_model(detector, score_threshold=0.0, max_detections=3)
    assert len(handler.predict(cat_png)) == 3


def test_downscaled_photo_answers_in_original_pixels(detector: ObjectDetector, coffee_png: bytes) -> None:
    handler = sharing_model(detector, score_threshold=0.0, max_side=150)
    item = handler.preprocess(coffee_png)
    assert max(item.image.shape[1:]) == 150 and item.scale == pytest.approx(4.0)
    result = handler.predict(coffee_png)
    check_detections(result, *size_of(coffee_png), threshold=0.0)
    assert max(d[next(iter(d))][2] for d in result) > 150


def test_labels_from_an_index_to_name_file(detector: ObjectDetector, tmp_path: Path, cat_png: bytes) -> None:
    labels = tmp_path / "index_to_name.json"
    labels.write_text(json.dumps({"0": "__background__", "1": "cat", "2": "dog"}))
    handler = create_handler(detector_spec(labels=str(labels)))
    handler.load()
    found = {key for d in handler.predict(cat_png) for key in d if key != "score"}
    assert found and found <= {"cat", "dog"}


def test_architecture_with_null_weights_downloads_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cat_png: bytes
) -> None:
    """torchvision's detection builders fetch ImageNet backbone weights unless told not to."""

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    spec = detector_spec(
        source={"architecture": "ssdlite320_mobilenet_v3_large", "weights": None},
        options={"score_threshold": 0.5},
    )
    handler = create_handler(spec)
    handler.load()
    check_detections(handler.predict(cat_png), *size_of(cat_png), threshold=0.5)


def test_bad_inputs_fail_alone(detector: ObjectDetector, cat_png: bytes) -> None:
    with pytest.raises(BadInputError):
        detector.preprocess(b"not an image")
    with pytest.raises(UnsupportedMediaTypeError):
        detector.preprocess(cat_png, "text/plain")
    small = create_handler(detector_spec(preprocess={"max_pixels": 1000}))
    with pytest.raises(PayloadTooLargeError):
        small.preprocess(cat_png)


@pytest.mark.parametrize(
    ("options", "named"),
    [({"threshold": 0.3}, "threshold"), ({"score_threshold": 1.5}, "score_threshold")],
)
def test_bad_options_are_named(options: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        create_handler(detector_spec(options=options))
