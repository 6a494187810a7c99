"""TorchServe's ``object_detector``: torchvision detection models, boxes in the photo's pixels.

Works with any model that follows torchvision's detection interface: in eval mode it takes a
list of ``(3, H, W)`` float images in 0-1 (each its own size; the model resizes and
normalises internally) and returns one dict per image with ``boxes`` (x1, y1, x2, y2 in the
input's pixels), ``scores`` and ``labels``: ``fasterrcnn_mobilenet_v3_large_320_fpn``,
``ssdlite320_mobilenet_v3_large``, ``retinanet_resnet50_fpn``, ... and the MTCNN face
detector of :mod:`handlers.mtcnn` (``configs/object_detector.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from handlers.base import BaseHandler
from handlers.image_io import check_media_type, decode_image
from handlers.options import DetectorOptions


@dataclass(frozen=True)
class DetectionInput:
    """One decoded request: the model's input and what maps its boxes back to the photo."""

    image: torch.Tensor  # (3, h, w) float in 0-1
    scale: float  # photo pixels per input pixel (1.0 unless the photo was downscaled)
    width: int  # of the photo as sent
    height: int


class ObjectDetector(BaseHandler):
    """Returns ``[{label: [x1, y1, x2, y2], "score": s}, ...]`` per image, best first."""

    name = "object_detector"
    Options = DetectorOptions
    options: DetectorOptions

    def preprocess(self, data: bytes, content_type: str | None = None) -> DetectionInput:
        check_media_type(content_type, self.name)
        image = decode_image(data, self.spec.preprocess.max_pixels)
        width, height = image.size
        scale = 1.0
        longest = max(width, height)
        if longest > self.options.max_side:
            scale = longest / self.options.max_side
            size = [max(1, round(height / scale)), max(1, round(width / scale))]
            image = F.resize(image, size, antialias=True)
        tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        return DetectionInput(tensor, scale, width, height)

    def example_input(self) -> DetectionInput:
        return DetectionInput(torch.zeros(3, 320, 320), 1.0, 320, 320)

    def collate(self, items: list[DetectionInput]) -> list[torch.Tensor]:
        # Detection models take a list of differently sized images; no stacking, no padding.
        return [item.image for item in items]

    def inference(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        assert self.model is not None, "load() must run before inference()"
        with torch.inference_mode():
            return self.model([image.to(self.device, non_blocking=True) for image in batch])

    def postprocess(
        self, output: list[dict[str, Any]], items: list[DetectionInput]
    ) -> list[list[dict[str, Any]]]:
        return [self.detections(item, found) for item, found in zip(items, output, strict=True)]

    def detections(self, item: DetectionInput, found: dict[str, Any]) -> list[dict[str, Any]]:
        """One image's detections above the threshold, in the photo's pixel coordinates."""
        scores = found["scores"].float().cpu()
        order = scores.argsort(descending=True)
        order = order[scores[order] >= self.options.score_threshold][: self.options.max_detections]
        boxes = found["boxes"].float().cpu()[order] * item.scale
        # Rounding in the downscale can push an edge a fraction of a pixel outside the photo.
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, item.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, item.height)
        labels = found["labels"].cpu()[order]
        return [
            {self.label(int(label)): [round(float(v), 2) for v in box], "score": round(float(score), 6)}
            for box, label, score in zip(boxes, labels, scores[order], strict=True)
        ]
