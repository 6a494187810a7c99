"""Decoding one request: every kind of bad image gets its own clear error."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers.errors import BadInputError, PayloadTooLargeError, RaytorchError, UnsupportedMediaTypeError
from handlers.image_io import check_media_type, decode_image
from tests.fixtures.specs import png_bomb

LIMIT = 40_000_000


def test_real_photo_decodes_to_rgb(cat_png: bytes) -> None:
    image = decode_image(cat_png, LIMIT)
    assert image.mode == "RGB" and image.size == (451, 300)


def test_grayscale_becomes_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("L", (20, 10), 128).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), LIMIT).mode == "RGB"


def test_empty_body() -> None:
    with pytest.raises(BadInputError, match="Empty request body"):
        decode_image(b"", LIMIT)


def test_not_an_image() -> None:
    with pytest.raises(BadInputError, match="not an image"):
        decode_image(b'{"instances": [1, 2, 3]}', LIMIT)


def test_truncated_jpeg(cat_jpeg: bytes) -> None:
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        decode_image(cat_jpeg[: len(cat_jpeg) // 2], LIMIT)


def test_pixel_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLargeError, match="pixels"):
        decode_image(png_bomb(100_000, 100_000), LIMIT)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain; charset=utf-8", "audio/wav"])
def test_declared_non_image_types_get_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match=content_type.split(";")[0]):
        check_media_type(content_type, "image_classifier")


@pytest.mark.parametrize(
    "content_type", [None, "", "image/jpeg", "application/octet-stream", "application/x-www-form-urlencoded"]
)
def test_types_that_may_carry_images_pass(content_type: str | None) -> None:
    check_media_type(content_type, "image_classifier")


@settings(max_examples=200, deadline=None)
def encoded(width: int, height: int, mode: str, file_format: str) -> tuple[tuple[int, int], bytes]:
    image = Image.new(mode, (width, height), 77)
    if file_format == "JPEG" and mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    return (width, height), buffer.getvalue()


real_images = st.builds(
    encoded,
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from(["RGB", "L", "RGBA", "P"]),
    st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP"]),
)


@given(st.one_of(st.binary(max_size=2048).map(lambda data: (None, data)), real_images))
@settings(max_examples=300, deadline=None)
def test_images_decode_and_arbitrary_bytes_get_a_client_error(
    case: tuple[tuple[int, int] | None, bytes],
) -> None:
    size, data = case  # size: a real image of that size, which must decode
    try:
        image = decode_image(data, LIMIT)
    except RaytorchError as exc:
        assert size is None, f"a real {size} image was refused: {exc.message}"
        assert exc.status in (400, 413)
        return
    assert image.mode == "RGB"
    if size is not None:
        assert image.size == size


def test_the_default_pixel_limit_refuses_a_6300_square_png() -> None:
    from handlers.spec import ImagePreprocess

    with pytest.raises(PayloadTooLargeError, match="6300x6300"):
        decode_image(png_bomb(6300, 6300), ImagePreprocess().max_pixels)


def flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoded_pixels_are_bounded_whatever_the_thread_count(
    monkeypatch: pytest.MonkeyPatch, cat_png: bytes
) -> None:
    """A request with 64 inputs through an image handler on 64 threads: at most the budget's
    worth of decoded pixels exists at any moment, and every input is answered."""
    from concurrent.futures import ThreadPoolExecutor

    from handlers import image_io
    from handlers.handler_catalog import create_handler
    from tests.fixtures.specs import tiny_spec

    budget = image_io.PixelBudget(2_500_000)
    monkeypatch.setattr(image_io, "DECODE_BUDGET", budget)
    handler = create_handler(tiny_spec())
    big = flat_png(1000)  # 1 Mpx each, 4 MB decoded, a few KB on the wire
    with ThreadPoolExecutor(64) as pool:
        items = list(pool.map(lambda data: handler.preprocess(data, "image/png"), [big] * 64))
    assert len(items) == 64
    assert 2_000_000 <= budget.peak <= 2_500_000  # two at a time, never more
    assert budget.in_use == 0  # every image was freed once resized
    handler.preprocess(cat_png)
    assert budget.in_use == 0


def test_an_image_over_the_budget_is_decoded_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers import image_io

    budget = image_io.PixelBudget(1_000_000)
    monkeypatch.setattr(image_io, "DECODE_BUDGET", budget)
    image = decode_image(flat_png(1500), LIMIT)
    assert budget.in_use == 2_250_000
    with pytest.raises(image_io.ModelNotReadyError, match="being decoded"):
        budget.acquire(10, timeout_s=0.05)  # nothing else fits while it is held
    del image
    assert budget.in_use == 0
