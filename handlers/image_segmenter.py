"""``image_segmenter``: a class per pixel, answered as a compact PNG mask plus class shares.

TorchServe returns the raw per-pixel scores as nested JSON lists (tens of megabytes for one
photo); we return the class map as a PNG instead. Works with torchvision's segmentation
models (``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``, ``fcn_resnet50``),
or any model mapping ``[B, 3, S, S]`` to logits ``[B, C, s, s]`` (or a dict with ``"out"``, or
a tuple whose first element is the final map). A one-channel output is a foreground/background
segmenter such as U²-Net (``configs/image_segmenter.yaml``): its pixels over 0.5 are class 1.

Batching: every photo is resized to the same ``preprocess.resize`` square (aspect ratio is not
kept), so photos of any size share a batch and a photo's answer never depends on its
batch-mates. The logits are interpolated back to the photo's own size before the argmax, so
the mask has exactly the photo's width and height.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as nnf

from handlers.base import BaseHandler
from handlers.errors import ConfigError, InferenceError
from handlers.image_io import check_media_type, decode_image
from handlers.image_ops import RESAMPLING, to_uint8_tensor
from handlers.options import SegmenterOptions
from handlers.spec import ModelSpec

# Logit values interpolated at once when building a full-size mask: bounds memory on huge photos.
_BAND_VALUES = 1 << 24


@dataclass(frozen=True)
class SegmentationInput:
    """One decoded request: the square model input and the photo's own size."""

    image: torch.Tensor  # (3, S, S), normalised
    width: int
    height: int


def upsampled_argmax(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Class index per pixel of ``logits`` (C, h, w) bilinearly resized to (height, width).

    Equal to ``interpolate(logits, (height, width), mode="bilinear").argmax(0)`` but computed a
    band of rows at a time, so a 40-megapixel photo does not need C x 40 M floats at once.
    """
    classes = logits.shape[0]
    # Pixel centres in grid_sample's [-1, 1] coordinates: the same sampling points as
    # interpolate(align_corners=False), with "border" padding matching its edge clamping.
    xs = (torch.arange(width, dtype=torch.float32, device=logits.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=torch.float32, device=logits.device) * 2 + 1) / height - 1
    rows_per_band = max(1, _BAND_VALUES // (classes * width))
    bands = []
    for top in range(0, height, rows_per_band):
        band_ys = ys[top : top + rows_per_band]
        grid = torch.stack(torch.meshgrid(band_ys, xs, indexing="ij")[::-1], dim=-1)
        sampled = nnf.grid_sample(
            logits[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False
        )
        bands.append(sampled[0].argmax(0))
    return torch.cat(bands)


def two_class_scores(foreground: torch.Tensor, kind: str) -> torch.Tensor:
    """A one-channel output ``[B, 1, h, w]`` as background/foreground logits ``[B, 2, h, w]``.

    Chosen so that the usual path stays exact: the argmax is class 1 where the probability is
    over 0.5, and a softmax over the two channels gives back (1 - p, p).
    """
    if kind == "logit":
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)
    p = foreground.float().clamp(1e-7, 1 - 1e-7)
    return torch.log(torch.cat([1 - p, p], dim=1))


def png_base64(class_map: torch.Tensor) -> str:
    """A (H, W) class map as a base64 PNG of mode L (pixel value = class index)."""
    image = Image.fromarray(class_map.to(torch.uint8).cpu().numpy(), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class ImageSegmenter(BaseHandler):
    """Returns ``{"width", "height", "classes", "mask_png"}`` per image (see docs/handlers.md)."""

    name = "image_segmenter"
    Options = SegmenterOptions
    options: SegmenterOptions

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if not spec.preprocess.resize:
            raise ConfigError(
                "image_segmenter needs preprocess.resize: every image is resized to that square "
                "so images of different sizes can share a batch (520 suits torchvision's weights)."
            )
        self.side = spec.preprocess.resize

    def preprocess(self, data: bytes, content_type: str | None = None) -> SegmentationInput:
        check_media_type(content_type, self.name)
        image = decode_image(data, self.spec.preprocess.max_pixels)
        width, height = image.size
        return SegmentationInput(self.transform(image), width, height)

    def transform(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised (3, S, S) tensor.

        ``preprocess.crop`` is not used: a crop would cut part of the photo out of the mask.
        """
        p = self.spec.preprocess
        image = image.resize((self.side, self.side), resample=RESAMPLING[p.interpolation])
        tensor = to_uint8_tensor(image).float() / 255
        mean = torch.tensor(p.mean).view(-1, 1, 1)
        return (tensor - mean) / torch.tensor(p.std).view(-1, 1, 1)

    def example_input(self) -> SegmentationInput:
        return SegmentationInput(torch.zeros(3, self.side, self.side), self.side, self.side)

    def collate(self, items: list[SegmentationInput]) -> torch.Tensor:
        return torch.stack([item.image for item in items])

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        output = super().inference(batch)
        # torchvision's models answer {"out": ..., "aux": ...}; U²-Net and other multi-output
        # exports put the final map first.
        if isinstance(output, dict):
            output = output["out"]
        elif isinstance(output, list | tuple):
            output = output[0]
        if output.dim() != 4 or output.shape[1] > 256:
            raise InferenceError(
                f"{self.spec.name} returned logits of shape {tuple(output.shape)}; image_segmenter "
                "needs [batch, classes <= 256, height, width] (the mask is an 8-bit PNG)."
            )
        return (
            two_class_scores(output, self.options.single_channel_output) if output.shape[1] == 1 else output
        )

    def postprocess(self, output: torch.Tensor, items: list[SegmentationInput]) -> list[Any]:
        return [self.segmentation(logits, item) for logits, item in zip(output, items, strict=True)]

    def segmentation(self, logits: torch.Tensor, item: SegmentationInput) -> dict[str, Any]:
        """One image's answer from its logits (C, s, s)."""
        class_map = upsampled_argmax(logits, item.height, item.width)
        counts = torch.bincount(class_map.flatten(), minlength=logits.shape[0]).tolist()
        pixels = item.width * item.height
        present = sorted((i for i, n in enumerate(counts) if n), key=lambda i: -counts[i])
        result: dict[str, Any] = {
            "width": item.width,
            "height": item.height,
            "classes": [
                {"label": self.label(i), "index": i, "pixel_share": round(counts[i] / pixels, 6)}
                for i in present
            ],
            "mask_png": png_base64(class_map),
        }
        if self.options.raw_probabilities:
            result["probabilities"] = self.coarse_probabilities(logits, item)
        return result

    def coarse_probabilities(self, logits: torch.Tensor, item: SegmentationInput) -> dict[str, Any]:
        """Per-class probabilities on a grid of at most ``probabilities_size`` cells a side."""
        cells = self.options.probabilities_size / max(item.width, item.height)
        grid_w = max(1, min(item.width, round(item.width * cells)))
        grid_h = max(1, min(item.height, round(item.height * cells)))
        coarse = nnf.interpolate(logits[None].float(), size=(grid_h, grid_w), mode="bilinear")
        probabilities = torch.softmax(coarse[0], dim=0).cpu()
        return {
            "width": grid_w,
            "height": grid_h,
            "labels": [self.label(i) for i in range(logits.shape[0])],
            "values": [[[round(v, 4) for v in row] for row in plane] for plane in probabilities.tolist()],
        }
