"""TorchServe's ``image_classifier``: resize, crop, normalise, softmax, top-k labels."""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from handlers.classification import TopKClassifier
from handlers.image_io import check_media_type, decode_image

# Names of `preprocess.interpolation`, shared by every image handler.
INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


class ImageClassifier(TopKClassifier):
    """Returns ``{label: probability}`` for the top-k classes, highest first."""

    name = "image_classifier"

    def preprocess(self, data: bytes, content_type: str | None = None) -> torch.Tensor:
        check_media_type(content_type, self.name)
        image = decode_image(data, self.spec.preprocess.max_pixels)
        return self.transform(image)

    def transform(self, image: Any) -> torch.Tensor:
        """PIL image -> normalised float tensor of shape (3, H, W)."""
        p = self.spec.preprocess
        # Resize and crop on the uint8 PIL image: cheaper than on a float tensor.
        if p.resize:
            image = F.resize(image, [p.resize], interpolation=INTERPOLATION[p.interpolation], antialias=True)
        if p.crop:
            image = F.center_crop(image, [p.crop, p.crop])
        tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        return F.normalize(tensor, mean=list(p.mean), std=list(p.std))

    def example_input(self) -> torch.Tensor:
        # A blank photo through preprocess: the probe is what a real request becomes, also when
        # a subclass preprocesses differently (a grayscale 28x28 MNIST handler, say).
        side = max(self.spec.preprocess.resize or 0, self.spec.preprocess.crop or 0, 32)
        buffer = io.BytesIO()
        Image.new("RGB", (side, side)).save(buffer, format="PNG")
        return self.preprocess(buffer.getvalue(), "image/png")
