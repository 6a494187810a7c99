"""Explanations with Captum: which pixels or words made the model answer what it did.

Two kinds, as TorchServe's default handlers give them:

- images: Integrated Gradients (IG) of the target class's logit with respect to the
  normalised input, from an all-zero baseline, one attribution per channel and pixel at the
  model's input resolution (``[3][H][W]`` nested lists), or a PNG heat map of it;
- texts: per word (a ``\\w+`` word, or for the byte n-gram tokenizer a whitespace-separated
  word: the n-grams that end in it), how much the target class's probability drops when the
  word's tokens are replaced by padding (Captum's ``FeatureAblation``):
  ``{"words": [...], "importances": [...]}``.

Both are generators that yield after each chunk of model work (``internal_batch_size`` IG
steps, or that many ablated words): the replica runs each chunk as its own job on the
inference thread, so prediction batches run between the chunks of a long explanation
(``deployments/model/streams.py``). IG is additive along its path, so the path is split into
segments of ``internal_batch_size`` steps, each integrated by Captum, and the segments summed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from handlers.errors import BadInputError
from handlers.explain_request import ExplainRequest
from handlers.spec import ExplainSettings

Steps = Generator[None, None, Any]  # yields between chunks, returns the explanation
__all__ = ["ExplainRequest", "Steps", "TextItem", "heatmap_png", "integrated_gradients", "word_ablation"]


@dataclass(frozen=True)
class TextItem:
    """A text prepared for explaining: its token ids and each word's token positions."""

    token_ids: torch.Tensor
    words: list[tuple[str, list[int]]]


def steps_for(request: ExplainRequest, settings: ExplainSettings) -> int:
    """The IG steps of ``request`` within the model's bound (400 above it)."""
    steps = settings.n_steps if request.n_steps is None else request.n_steps
    if not 1 <= steps <= settings.max_steps:
        raise BadInputError(f"n_steps must be between 1 and {settings.max_steps} for this model, not {steps}")
    return steps


def resolve_target(target: str | None, labels: list[str] | None, logits: torch.Tensor) -> int:
    """The class index to explain: ``target`` as an index or a label, else the top class."""
    classes = logits.shape[-1]
    if target is None or target == "":
        return int(logits.argmax(dim=-1).reshape(-1)[0])
    if target.lstrip("-").isdigit():
        index = int(target)
        if not 0 <= index < classes:
            raise BadInputError(f"target {index} is not a class of this model (0-{classes - 1})")
        return index
    if labels and target in labels:
        return labels.index(target)
    raise BadInputError(f"target {target[:80]!r} is neither a class index nor a label of this model")


def integrated_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target: int,
    n_steps: int,
    chunk: int,
) -> Steps:
    """IG of ``forward``'s ``target`` logit for ``inputs`` (a batch of one) from a zero
    baseline, ``n_steps`` steps in segments of ``chunk``; yields between segments."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(forward)
    baseline = torch.zeros_like(inputs)
    total = torch.zeros_like(inputs)
    done = 0
    while done < n_steps:
        steps = min(chunk, n_steps - done)
        start = baseline + (done / n_steps) * (inputs - baseline)
        end = baseline + ((done + steps) / n_steps) * (inputs - baseline)
        with torch.enable_grad():
            total += ig.attribute(end, baselines=start, target=target, n_steps=steps).detach()
        done += steps
        if done < n_steps:
            yield
    return total


def word_ablation(
    forward: Callable[[torch.Tensor], torch.Tensor],
    token_ids: torch.Tensor,
    words: list[list[int]],
    target: int,
    chunk: int,
) -> Steps:
    """Per word (its token positions in ``token_ids``, a batch of one), the drop of
    ``forward``'s ``target`` output when its tokens become padding; ``chunk`` words per Captum call."""
    from captum.attr import FeatureAblation

    ablation = FeatureAblation(forward)
    importances: list[float] = []
    for first in range(0, len(words), chunk):
        group = words[first : first + chunk]
        # The chunk's words are features 0..k-1; every other token is feature k (ablated once
        # too, and ignored), since Captum's mask must cover every position.
        mask = torch.full_like(token_ids, len(group))
        for feature, positions in enumerate(group):
            mask[0, positions] = feature
        with torch.no_grad():
            attributions = ablation.attribute(
                token_ids,
                baselines=0,
                target=target,
                feature_mask=mask,
                perturbations_per_eval=len(group) + 1,
            )
        importances += [float(attributions[0, positions[0]]) for positions in group]
        if first + chunk < len(words):
            yield
    return importances


def heatmap_png(attributions: torch.Tensor, photo: torch.Tensor | None = None) -> bytes:
    """A PNG of ``attributions`` ``[C, H, W]``: their absolute sum per pixel, from black
    through red and yellow to white (scaled to the 99th percentile), over the photo
    ``[3, H, W]`` uint8 in grey when given."""
    heat = attributions.abs().sum(dim=0).float()
    scale = torch.quantile(heat.flatten()[:: max(1, heat.numel() // 100_000)], 0.99).clamp(min=1e-12)
    level = (heat / scale).clamp(0, 1)
    rgb = torch.stack([(3 * level).clamp(0, 1), (3 * level - 1).clamp(0, 1), (3 * level - 2).clamp(0, 1)])
    if photo is not None and photo.shape[-2:] == heat.shape and photo.shape[0] == 3:
        grey = photo.float().mean(dim=0, keepdim=True) / 255
        rgb = 0.4 * grey + 0.6 * rgb
    pixels = (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def run_to_end(steps: Steps) -> Any:
    """Run an explanation's chunks one after another and return it (tests, the CLI)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
