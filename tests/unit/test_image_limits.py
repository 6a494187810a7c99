"""Images that are small in pixels but huge once resized, and image formats nobody documented
(issue 24, findings 2 and 15): refused before the allocation, with the limit or the format
named; no Ray."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from handlers.errors import BadInputError, UnsupportedMediaTypeError
from handlers.handler_catalog import create_handler
from handlers.image_io import decode_image
from handlers.torchserve import ts_api
from handlers.torchserve.names import TS_API_ENV
from tests.fixtures.specs import tiny_spec


def encoded(width: int, height: int, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def vision_classifier() -> object:
    """Our TorchServe vision shim, also where TorchServe's own ``ts`` package is installed
    (``RAYTORCH_TS_API=auto`` would pick that one, whose limits are not ours)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TS_API_ENV, "raytorch")
        ts_api.install()
        from ts.torch_handler.image_classifier import ImageClassifier

        return ImageClassifier()


def test_a_thin_image_whose_resize_would_pass_max_pixels_is_400_naming_it() -> None:
    handler = create_handler(tiny_spec(preprocess={"resize": 64, "crop": 56, "max_pixels": 100_000}))
    with pytest.raises(BadInputError, match=r"2000x1.*128000x64.*preprocess.max_pixels \(100000\)"):
        handler.preprocess(encoded(2000, 1), "image/png")


def test_ordinary_and_panorama_photos_still_pass() -> None:
    handler = create_handler(tiny_spec(preprocess={"resize": 64, "crop": 56, "max_pixels": 100_000}))
    assert tuple(handler.preprocess(encoded(300, 200), None).shape) == (3, 56, 56)
    assert tuple(handler.preprocess(encoded(60, 1200), None).shape) == (3, 56, 56)  # 20:1


def test_torchserve_vision_handler_refuses_extreme_aspect_ratios(vision_classifier: object) -> None:
    with pytest.raises(BadInputError, match=r"100x1.*aspect ratio.*at most 32:1"):
        vision_classifier.preprocess([{"data": encoded(100, 1)}])
    assert tuple(vision_classifier.preprocess([{"data": encoded(64, 48)}]).shape) == (1, 3, 224, 224)


@pytest.mark.parametrize("image_format", ["ICO", "PPM", "PCX"])
def test_formats_the_handlers_do_not_document_are_415_naming_the_format(
    image_format: str, vision_classifier: object
) -> None:
    data = encoded(16, 16, image_format)
    with pytest.raises(UnsupportedMediaTypeError, match=f"{image_format}.*JPEG, PNG, WEBP, BMP, GIF, TIFF"):
        decode_image(data, 1_000_000)
    with pytest.raises(UnsupportedMediaTypeError, match=image_format):
        vision_classifier.preprocess([{"data": data}])


def test_eps_is_refused_before_ghostscript_could_run() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(UnsupportedMediaTypeError, match="EPS"):
        decode_image(eps, 1_000_000)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_the_documented_formats_decode(image_format: str) -> None:
    assert decode_image(encoded(8, 6, image_format), 1_000_000).size == (8, 6)


def test_bytes_of_no_known_format_stay_a_400() -> None:
    with pytest.raises(BadInputError, match="not an image format"):
        decode_image(b"random bytes \x01\x02", 1_000_000)
