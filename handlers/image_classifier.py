"""TorchServe's ``image_classifier``: resize, crop, normalise, softmax, top-k labels."""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image

from handlers.classification import TopKClassifier
from handlers.explain import (
    ExplainRequest,
    Steps,
    heatmap_png,
    integrated_gradients,
    resolve_target,
    steps_for,
)
from handlers.image_io import check_media_type, decode_image
from handlers.image_ops import center_crop, resize_shorter_side, to_uint8_tensor


class ImageClassifier(TopKClassifier):
    """Returns ``{label: probability}`` for the top-k classes, highest first.

    Each request is decoded, resized and cropped on its own (``preprocess`` -> ``transform``,
    a uint8 tensor); the batch is converted to float and normalised in one vectorised step
    (``collate``) on the replica's inference thread, so per-request work never starts torch's
    thread pools elsewhere. A subclass whose ``transform`` returns a float tensor (already
    normalised, any number of channels) gets it batched as it is.
    """

    name = "image_classifier"
    prefers_channels_last = True
    _affine: tuple[torch.Tensor, torch.Tensor] | None = None  # normalisation, built on first use

    def preprocess(self, data: bytes, content_type: str | None = None) -> torch.Tensor:
        check_media_type(content_type, self.name)
        image = decode_image(data, self.spec.preprocess.max_pixels)
        return self.transform(image)

    def transform(self, image: Any) -> torch.Tensor:
        """PIL image -> uint8 tensor of shape (3, H, W), resized and cropped."""
        p = self.spec.preprocess
        # Resize and crop on the uint8 PIL image: cheaper than on a float tensor.
        if p.resize:
            image = resize_shorter_side(image, p.resize, p.interpolation, p.max_pixels)
        if p.crop:
            image = center_crop(image, p.crop)
        return to_uint8_tensor(image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float, scaled to 0-1 and normalised with the spec's mean/std.

        One multiply-add per value, in place on the float copy: ``x * scale + bias`` with
        ``scale = 1 / (255 std)`` and ``bias = -mean / std``.
        """
        p = self.spec.preprocess
        if batch.shape[1] != len(p.mean):  # broadcasting would hide the mismatch
            raise ValueError(f"input has {batch.shape[1]} channels, preprocess.mean has {len(p.mean)}")
        if self._affine is None:
            std = torch.tensor(p.std, dtype=torch.float32).view(1, -1, 1, 1)
            mean = torch.tensor(p.mean, dtype=torch.float32).view(1, -1, 1, 1)
            self._affine = (1 / (255 * std), -mean / std)
        scale, bias = self._affine
        return batch.float().mul_(scale).add_(bias)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(items)
        if batch.dtype == torch.uint8:
            if self.channels_last:  # converted while still uint8: a quarter of the bytes to move
                batch = batch.contiguous(memory_format=torch.channels_last)
            batch = self.normalize(batch)
        return batch

    def example_input(self) -> torch.Tensor:
        # A blank photo through preprocess: the probe is what a real request becomes, also when
        # a subclass preprocesses differently (a grayscale 28x28 MNIST handler, say).
        side = max(self.spec.preprocess.resize or 0, self.spec.preprocess.crop or 0, 32)
        buffer = io.BytesIO()
        Image.new("RGB", (side, side)).save(buffer, format="PNG")
        return self.preprocess(buffer.getvalue(), "image/png")

    def explain(self, item: torch.Tensor, request: ExplainRequest) -> Steps:
        """Integrated Gradients of the target class (default: the top one) per channel and
        pixel of the model's input, ``[C][H][W]`` as TorchServe answers, or a PNG heat map."""
        assert self.model is not None, "load() must run before explain()"
        settings = self.spec.explain
        n_steps = steps_for(request, settings)
        inputs = self.collate([item]).to(self.device)
        with torch.inference_mode():
            logits = self.model(inputs)
        target = resolve_target(request.target, self.labels, logits)
        chunk = settings.internal_batch_size
        attributions = yield from integrated_gradients(self.model, inputs, target, n_steps, chunk)
        attributions = attributions[0].float().cpu()
        if request.heatmap:
            return heatmap_png(attributions, item if item.dtype == torch.uint8 else None)
        return attributions.tolist()
