"""MTCNN face detection (Zhang et al., 2016) with torchvision's detection interface.

Three small cascaded networks: P-Net proposes face windows over an image pyramid, R-Net and
O-Net refine and re-score them. The layers are named as in ``facenet-pytorch``, so its
pretrained state_dicts (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT) load as they are,
with ``weights_only=True``; the package itself is never imported (its wheel pins old torch,
numpy and Pillow). The cascade follows facenet-pytorch's ``detect_face``.

``MTCNN`` takes what ``object_detector`` gives every detection model, a list of ``(3, H, W)``
float images in 0-1, each its own size, and returns one dict per image with ``boxes``
(x1, y1, x2, y2 in the image's pixels), ``scores`` and ``labels`` (1, "face").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as nnf
from torchvision.ops import nms

from handlers.loading import apply_state_dict, load_state_dict_file, resolve_path

FACE_LABEL = 1
# P-Net looks at 12-pixel windows with a stride of 2 pixels in each pyramid level.
_CELL, _STRIDE = 12, 2


class _Stage(nn.Module):
    """Conv + PReLU (+ max-pool) layers named ``conv1``, ``prelu1``, ``pool1``, ... as in the
    state_dicts, optionally followed by a dense layer and its PReLU (R-Net, O-Net)."""

    def __init__(self, channels: list[int], kernels: list[int], pools: list[tuple[int, int] | None]) -> None:
        super().__init__()
        self.trunk_layers: list[str] = []
        for i, (kernel, pool) in enumerate(zip(kernels, pools, strict=True), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(channels[i - 1], channels[i], kernel))
            self.add_module(f"prelu{i}", nn.PReLU(channels[i]))
            self.trunk_layers += [f"conv{i}", f"prelu{i}"]
            if pool:
                self.add_module(f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True))
                self.trunk_layers.append(f"pool{i}")
        self.dense_layers: list[str] = []

    def add_dense(self, index: int, inputs: int, outputs: int) -> None:
        """The dense layer (and PReLU) after the convolutions, named as in the state_dicts."""
        self.add_module(f"dense{index}", nn.Linear(inputs, outputs))
        self.add_module(f"prelu{index}", nn.PReLU(outputs))
        self.dense_layers = [f"dense{index}", f"prelu{index}"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.trunk_layers:
            x = getattr(self, name)(x)
        if self.dense_layers:
            # The weights come from Caffe/TensorFlow, which flatten in (W, H, C) order.
            x = x.permute(0, 3, 2, 1).flatten(1)
            for name in self.dense_layers:
                x = getattr(self, name)(x)
        return x


class PNet(_Stage):
    """Proposal network: fully convolutional, face probability and box offsets per 12x12 window."""

    def __init__(self) -> None:
        super().__init__([3, 10, 16, 32], [3, 3, 3], [(2, 2), None, None])
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x)
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(_Stage):
    """Refinement network over 24x24 crops: face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__([3, 28, 48, 64], [3, 3, 2], [(3, 2), (3, 2), None])
        self.add_dense(4, 576, 128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x)
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(_Stage):
    """Output network over 48x48 crops: face probability, box offsets (and unused landmarks)."""

    def __init__(self) -> None:
        super().__init__([3, 32, 64, 64, 128], [3, 3, 3, 2], [(3, 2), (3, 2), (2, 2), None])
        self.add_dense(5, 1152, 256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # facial landmarks: kept so the state_dict loads strictly

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x)
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), dim=1)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """0-255 pixels to the [-1, 1] range the networks were trained on."""
    return (pixels - 127.5) * 0.0078125


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares around their centres (the next network takes square crops)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = boxes[:, 0] + (w - side) / 2, boxes[:, 1] + (h - side) / 2
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regressed(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply a network's box offsets, given as fractions of the box's size in pixels."""
    size = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    return boxes + offsets * size


def _min_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS on intersection over the *smaller* box, as MTCNN's last stage does.

    It removes a small box found inside a bigger face, which intersection-over-union keeps.
    """
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = scores.argsort(descending=True), []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left + 1).clamp(min=0).prod(dim=1)
        order = rest[inter / torch.minimum(area[best], area[rest]) <= threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


class MTCNN(nn.Module):
    """Face detector: a list of ``(3, H, W)`` images in 0-1 -> one dict of boxes, scores, labels each.

    ``min_face_size`` (pixels) sets the pyramid's largest scale; ``thresholds`` are the face
    probabilities each of the three stages needs; ``factor`` is the pyramid's scale step.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face_size, self.thresholds, self.factor = min_face_size, thresholds, factor
        # Read by handlers.loading as the model's class names: label 1 is "face".
        self.categories = ["__background__", "face"]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        # Images of different sizes cannot share a pyramid; each is searched on its own, so a
        # photo's faces never depend on its batch-mates.
        return [self.detect(image[None] * 255.0) for image in images]

    def detect(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Faces in one image ``(1, 3, H, W)`` of 0-255 floats."""
        boxes, scores = self.propose(pixels)
        for net, side, threshold in (
            (self.rnet, 24, self.thresholds[1]),
            (self.onet, 48, self.thresholds[2]),
        ):
            if not len(boxes):
                break
            boxes = _squared(boxes)
            offsets, probabilities = net(_normalise(self.crops(pixels, boxes, side)))
            passed = probabilities[:, 1] > threshold
            boxes, scores, offsets = boxes[passed], probabilities[passed, 1], offsets[passed]
            # The reference cascade suppresses before regressing in R-Net's stage, after it in
            # O-Net's, and there on the smaller box's area: kept, as the weights were tuned so.
            if net is self.rnet:
                keep = nms(boxes, scores, 0.7)
                boxes, scores = _regressed(boxes[keep], offsets[keep]), scores[keep]
            else:
                boxes = _regressed(boxes, offsets)
                keep = _min_nms(boxes, scores, 0.7)
                boxes, scores = boxes[keep], scores[keep]
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": torch.full_like(scores, FACE_LABEL, dtype=torch.long),
        }

    def propose(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net's candidate boxes (already offset by its regression) and their scores."""
        height, width = pixels.shape[2:]
        scale = _CELL / self.min_face_size
        found = []
        while min(height, width) * scale >= _CELL:
            resized = nnf.interpolate(
                pixels, size=(int(height * scale + 1), int(width * scale + 1)), mode="area"
            )
            offsets, probabilities = self.pnet(_normalise(resized))
            hits = (probabilities[0, 1] >= self.thresholds[0]).nonzero()
            xy = hits.flip(1).to(pixels.dtype)
            boxes = torch.cat(
                [((_STRIDE * xy + 1) / scale).floor(), ((_STRIDE * xy + _CELL) / scale).floor()], 1
            )
            scores = probabilities[0, 1][hits[:, 0], hits[:, 1]]
            keep = nms(boxes, scores, 0.5)
            found.append((boxes[keep], scores[keep], offsets[0][:, hits[:, 0], hits[:, 1]].T[keep]))
            scale *= self.factor
        if not found:
            return pixels.new_zeros(0, 4), pixels.new_zeros(0)
        boxes, scores, offsets = (torch.cat(parts) for parts in zip(*found, strict=True))
        keep = nms(boxes, scores, 0.7)
        boxes, scores, offsets = boxes[keep], scores[keep], offsets[keep]
        # P-Net's offsets are relative to the window's size without the +1 of the later stages.
        size = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
        return boxes + offsets * size, scores

    @staticmethod
    def crops(pixels: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
        """Each box's pixels (clipped to the image), resized to ``side`` x ``side``."""
        height, width = pixels.shape[2:]
        corners = boxes.trunc().int().tolist()
        out = []
        for x1, y1, x2, y2 in corners:
            # 1-based inclusive coordinates clipped to the image, as in the reference code.
            # (never empty: a box outside the image keeps its nearest edge pixel).
            x1, y1 = min(max(x1, 1), width), min(max(y1, 1), height)
            x2, y2 = max(min(x2, width), x1), max(min(y2, height), y1)
            patch = pixels[:, :, y1 - 1 : y2, x1 - 1 : x2]
            out.append(nnf.interpolate(patch, size=(side, side), mode="area"))
        return torch.cat(out)


def mtcnn(pnet: str, rnet: str, onet: str, min_face_size: int = 20) -> MTCNN:
    """An :class:`MTCNN` with the three networks' state_dicts loaded (paths or ``pkg://``)."""
    model = MTCNN(min_face_size=min_face_size)
    for net, ref in ((model.pnet, pnet), (model.rnet, rnet), (model.onet, onet)):
        apply_state_dict(net, load_state_dict_file(resolve_path(ref)), ref)
    return model
