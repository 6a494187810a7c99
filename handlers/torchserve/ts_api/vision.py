"""TorchServe's vision handlers: ``VisionHandler``, ``ImageClassifier``, ``ImageSegmenter``
and ``ObjectDetector`` (modules ``ts.torch_handler.vision_handler``, ``.image_classifier``,
``.image_segmenter`` and ``.object_detector`` all resolve here).

Their answers have TorchServe's shapes, which handler files build on (an MNIST handler
overrides ``image_processing`` and ``postprocess`` and keeps the rest). Pillow's
decompression-bomb limit stays on whatever the context says; images open only in the formats
raytorch's own handlers take, and at most :data:`MAX_ASPECT_RATIO`:1 (``Resize(256)`` of a
1x8000 image would allocate gigabytes).
"""

from __future__ import annotations

import base64
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms

from handlers.image_io import check_aspect_ratio, open_image
from handlers.torchserve.ts_api.base_handler import BaseHandler
from handlers.torchserve.ts_api.util import map_class_to_label, timed

INSIGHT_STEPS = 15  # TorchServe's vision handlers integrate over 15 steps
MAX_ASPECT_RATIO = 32  # Resize(256) then makes at most 256x8192: 6 MB of RGB
IMAGENET_PROCESSING = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


class VisionHandler(BaseHandler):
    """Decodes each request's image (bytes, base64 text, or a nested list of pixels)."""

    image_processing: Any = None

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, bytes | bytearray):
                opened = open_image(bytes(image))
                check_aspect_ratio(opened.size, MAX_ASPECT_RATIO)
                image = self.image_processing(opened)
            else:
                image = torch.FloatTensor(image)
            images.append(image)
        return torch.stack(images).to(self.device)

    def initialize(self, context: Any) -> None:
        """Load the model, then Captum's Integrated Gradients over it (``self.ig``, as TorchServe)."""
        from captum.attr import IntegratedGradients

        super().initialize(context)
        self.ig = IntegratedGradients(self.model)
        self.initialized = True

    def get_insights(self, tensor_data: Any, raw_data: Any, target: int = 0) -> Any:
        """Integrated Gradients of class ``target`` per channel and pixel of each image
        (TorchServe's 15 steps), as nested lists."""
        with torch.enable_grad():
            return self.ig.attribute(tensor_data, target=int(target), n_steps=INSIGHT_STEPS).tolist()


class ImageClassifier(VisionHandler):
    """The ``topk`` classes as ``{label: probability}`` per image."""

    topk = 5
    image_processing = IMAGENET_PROCESSING

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    @timed
    def postprocess(self, data: torch.Tensor) -> list[dict[str, float]]:
        probabilities, classes = torch.topk(F.softmax(data, dim=1), self.topk, dim=1)
        return map_class_to_label(probabilities.tolist(), self.mapping, classes.tolist())


class ImageSegmenter(VisionHandler):
    """Per pixel, the most likely class and its probability (``[H][W][class, probability]``)."""

    image_processing = IMAGENET_PROCESSING

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        scores = F.softmax(data["out"], dim=1).max(dim=1)
        return torch.stack([scores.indices.to(scores.values.dtype), scores.values], dim=3).tolist()


class ObjectDetector(VisionHandler):
    """Per image, ``[{label: [x1, y1, x2, y2], "score": s}]`` for boxes scoring ``threshold`` or more."""

    image_processing = transforms.Compose([transforms.ToTensor()])
    threshold = 0.5

    @timed
    def postprocess(self, data: list[dict[str, torch.Tensor]]) -> list[list[dict[str, Any]]]:
        results = []
        for row in data:
            keep = row["scores"] >= self.threshold
            boxes, labels, scores = (row[key][keep].tolist() for key in ("boxes", "labels", "scores"))
            found = []
            for box, label, score in zip(boxes, labels, scores, strict=True):
                found.append({**map_class_to_label([[box]], self.mapping, [[label]])[0], "score": score})
            results.append(found)
        return results
