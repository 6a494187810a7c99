"""Decode and validate one image request, before it joins a batch.

Only the formats the handlers document are opened (:data:`IMAGE_FORMATS`): Pillow knows dozens
more, some of which run external programs (EPS runs Ghostscript) or parse rarely used code.

Decoded images are what costs memory (width x height x 3-4 bytes, however small the file), so
besides the per-image pixel limit, a process holds at most :data:`DECODE_BUDGET_PIXELS` decoded
pixels at once (:class:`PixelBudget`): the inputs of a 64-input request, or 64 requests, wait
for their turn instead of all being decoded side by side, whatever the number of decode
threads. An image counts from its decoding until the handler drops it (usually once resized).
"""

from __future__ import annotations

import io
import threading
import warnings
import weakref

from PIL import Image, UnidentifiedImageError

from handlers.errors import (
    BadInputError,
    ModelNotReadyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

# About 130 MB of decoded RGBA per replica: two images at the default max_pixels, or dozens of
# ordinary photos. One image over it (a model with a higher max_pixels) is decoded alone.
DECODE_BUDGET_PIXELS = 2 * 4096 * 4096
BUDGET_WAIT_S = 30.0

# What image handlers open (docs/handlers.md); Pillow's JPEG reader includes MPO (phone photos).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Declared types that are certainly not an image. Anything else (no type, octet-stream, the
# form-urlencoded type curl sets for --data-binary) is judged by the bytes themselves.
REFUSED_MEDIA_PREFIXES = ("text/", "application/json", "application/xml", "audio/", "video/")


def check_media_type(content_type: str | None, handler_name: str) -> None:
    """Refuse a declared content type that cannot be an image (415)."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith(REFUSED_MEDIA_PREFIXES):
        raise UnsupportedMediaTypeError(
            f"Content type {media!r} is not supported by {handler_name}: send the image bytes "
            "(JPEG, PNG, WebP, ...) as the body or as multipart field 'data'."
        )


class PixelBudget:
    """Decoded pixels this process may hold at once; :meth:`acquire` waits for room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._changed = threading.Condition()

    def acquire(self, pixels: int, timeout_s: float = BUDGET_WAIT_S) -> None:
        """Take ``pixels`` (alone when they exceed the limit); 503 after ``timeout_s``."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: self.in_use == 0 or self.in_use + pixels <= self.limit, timeout_s
            ):
                raise ModelNotReadyError(
                    f"Too many large images are being decoded; none freed room within {timeout_s:g}s.",
                    retry_after_s=1,
                )
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)

    def release(self, pixels: int) -> None:
        """Give ``pixels`` back (the image holding them was freed)."""
        with self._changed:
            self.in_use -= pixels
            self._changed.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)


def _refused_format(data: bytes) -> str | None:
    """The name of a format Pillow recognises in ``data``'s first bytes but we do not open,
    from Pillow's own signature checks (they read a prefix, never parse the file)."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        try:
            if name not in IMAGE_FORMATS and accept is not None and accept(prefix) is True:
                return name
        except Exception:  # a check that needs more bytes than there are: not that format
            continue
    return None


def open_image(data: bytes) -> Image.Image:
    """``Image.open`` limited to :data:`IMAGE_FORMATS` (lazy: the header is read, not the
    pixels); 415 naming a format Pillow knows but we refuse, ``UnidentifiedImageError`` for
    anything else."""
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        refused = _refused_format(data)
        if refused is None:
            raise
        raise UnsupportedMediaTypeError(
            f"Image format {refused} is not accepted: send {', '.join(IMAGE_FORMATS)}"
        ) from None


def check_aspect_ratio(size: tuple[int, int], limit: float) -> None:
    """Refuse (400) an image whose long side is over ``limit`` times its short side: a resize
    of its short side to a model's size would make it huge (1x8000 pixels become 256x2048000)."""
    width, height = size
    if max(width, height) > limit * max(1, min(width, height)):
        raise BadInputError(
            f"Image is {width}x{height}: its aspect ratio is over the limit (at most {limit:g}:1), "
            "so resizing it for the model would take more memory than a photo may"
        )


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an RGB image, refusing empty, corrupt or oversized images."""
    if not data:
        raise BadInputError(
            "Empty request body: send an image, e.g. curl -T kitten.jpg http://127.0.0.1:8000/predictions/MODEL"
        )
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = open_image(data)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"Image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} pixels."
                )
            DECODE_BUDGET.acquire(width * height)
            try:
                image.load()
                if image.mode != "RGB":
                    image = image.convert("RGB")
            except BaseException:
                DECODE_BUDGET.release(width * height)
                raise
            # Counted until the caller drops the image (CPython frees it at once then).
            weakref.finalize(image, DECODE_BUDGET.release, width * height)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(f"Image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError:
        raise BadInputError(
            f"Request body ({len(data)} bytes) is not an image format this server can decode "
            "(JPEG, PNG, WebP, BMP, GIF, TIFF)."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"Image could not be decoded (truncated or corrupt?): {exc}") from exc
    return image
