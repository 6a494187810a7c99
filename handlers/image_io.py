"""Decode and validate one image request, before it joins a batch."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from handlers.errors import BadInputError, PayloadTooLargeError, UnsupportedMediaTypeError

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
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"Image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} pixels."
                )
            image.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(f"Image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError:
        raise BadInputError(
            f"Request body ({len(data)} bytes) is not an image format this server can decode "
            "(JPEG, PNG, WebP, BMP, GIF, TIFF)."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"Image could not be decoded (truncated or corrupt?): {exc}") from exc
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image
