"""Image geometry on Pillow images, the way torchvision does it, without importing torchvision.

torchvision's import costs a model replica seconds of start and tens of MB; the classifier's
per-request work needs only these three steps. Each matches torchvision.transforms.v2's
result pixel for pixel (a unit test compares them): the same output sizes, crop anchors and
zero padding, and Pillow's own resampling filters, which torchvision calls for Pillow images.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from handlers.errors import BadInputError

# Names of `preprocess.interpolation`, shared by every image handler.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resize_shorter_side(
    image: Image.Image, size: int, interpolation: str, max_pixels: int | None = None
) -> Image.Image:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio; 400 when the
    result would have more than ``max_pixels`` (a thin image: 8000x1 becomes 2048000x256)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if max_pixels is not None and new_width * new_height > max_pixels:
        raise BadInputError(
            f"Image is {width}x{height}: resizing its shorter side to {size} would make it "
            f"{new_width}x{new_height} = {new_width * new_height} pixels, over preprocess.max_pixels "
            f"({max_pixels}); its aspect ratio is too extreme"
        )
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), resample=RESAMPLING[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """A ``size`` x ``size`` crop from the centre; smaller images are padded with black first."""
    width, height = image.size
    if size > width or size > height:
        left, top = max(0, (size - width) // 2), max(0, (size - height) // 2)
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB (or L) image as a uint8 tensor of shape (channels, H, W)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
