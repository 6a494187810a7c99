"""What a client asks of an explanation: plain data that crosses from the ingress (which never
imports torch) to the model replica. The explaining itself is :mod:`handlers.explain`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExplainRequest:
    """The class to explain (an index or a label; None: the model's top class), the Integrated
    Gradients steps (None: the model's ``explain.n_steps``) and whether to answer with a PNG
    heat map instead of the attribution lists."""

    target: str | None = None
    n_steps: int | None = None
    heatmap: bool = False
