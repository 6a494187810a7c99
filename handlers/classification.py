"""What every classifier answers: softmax, then the top-k ``{label: probability}``."""

from __future__ import annotations

from typing import Any

import torch

from handlers.base import BaseHandler


class TopKClassifier(BaseHandler):
    """A handler whose model returns logits ``[B, classes]``; subclasses only preprocess.

    Each result is ``{label: probability}`` for the ``top_k`` most likely classes, highest
    first (TorchServe's classifier shape), probabilities rounded to 6 decimals.
    """

    def postprocess(self, output: torch.Tensor, items: list[Any]) -> list[dict[str, float]]:
        probabilities = torch.softmax(output.float(), dim=1).cpu()
        k = min(self.spec.top_k, probabilities.shape[1])
        values, indices = probabilities.topk(k, dim=1)
        return [
            {self.label(int(i)): round(float(v), 6) for v, i in zip(row_v, row_i, strict=True)}
            for row_v, row_i in zip(values, indices, strict=True)
        ]
