"""Typed specifications of a model: how to build it, label it and feed it.

A :class:`ModelSpec` is what a config file's ``model:`` block (or a registration) turns into.
Every field is described and unknown keys are refused, so a typo in YAML fails with the
field's name instead of silently falling back to a default.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from handlers.torchserve.names import TORCHSERVE_PREFIX, default_handler_alias

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
DEFAULT_VERSION = "1.0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StrictModel(BaseModel):
    """Base for every spec: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(StrictModel):
    """Where the network and its weights come from: exactly one of four forms."""

    architecture: str | None = Field(
        None,
        description="A torchvision.models builder name, e.g. 'densenet161' or 'resnet18'.",
    )
    weights: str | None = Field(
        None,
        description=(
            "With `architecture`: 'DEFAULT', a weights enum member ('IMAGENET1K_V1' or "
            "'DenseNet161_Weights.IMAGENET1K_V1'), a local state_dict file, or null for "
            "random initialisation. Enum weights come from the torch hub cache, downloaded "
            "there when the network allows."
        ),
    )
    torchscript: str | None = Field(
        None, description="Path to a TorchScript file (torch.jit.save) to load as the model."
    )
    onnx: str | None = Field(
        None,
        description=(
            "Path to an ONNX file, run with onnxruntime (CPU, or CUDA with onnxruntime-gpu). "
            "Like every file path here, 'pkg://package/relative/path' names a file inside an "
            "installed package."
        ),
    )
    factory: str | None = Field(
        None,
        description="Import path 'package.module:callable' returning an nn.Module.",
    )
    factory_kwargs: dict[str, object] = Field(
        default_factory=dict, description="Keyword arguments passed to `factory`."
    )
    state_dict: str | None = Field(
        None,
        description=(
            "With `factory`: a state_dict file loaded with weights_only=True. A path, or "
            "'pkg://package/relative/path' for a file shipped inside an installed package."
        ),
    )
    download_timeout_s: float = Field(
        20.0, gt=0, description="Bound on fetching weights that are not cached yet."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSource:
        chosen = [k for k in ("architecture", "torchscript", "onnx", "factory") if getattr(self, k)]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of `architecture`, `torchscript`, `onnx` or `factory` "
                f"(got {chosen or 'none'})"
            )
        if self.weights is not None and not self.architecture:
            raise ValueError("`weights` applies only to `architecture`")
        if self.state_dict is not None and not self.factory:
            raise ValueError("`state_dict` applies only to `factory`")
        if self.factory_kwargs and not self.factory:
            raise ValueError("`factory_kwargs` applies only to `factory`")
        if self.factory and not re.fullmatch(r"([\w.]+|[^:]+\.py):[\w.]+", self.factory):
            raise ValueError(
                "`factory` must look like 'package.module:callable' or 'path/file.py:callable', "
                f"got {self.factory!r}"
            )
        return self


class ImagePreprocess(StrictModel):
    """How an image becomes the model's input tensor (TorchServe's defaults)."""

    resize: int | None = Field(256, gt=0, description="Resize the shorter side to this many pixels.")
    crop: int | None = Field(224, gt=0, description="Center-crop a square of this size.")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="Per-channel mean (0-1 scale).")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="Per-channel std (0-1 scale).")
    interpolation: Literal["nearest", "bilinear", "bicubic"] = Field(
        "bilinear", description="Resampling filter used by `resize`."
    )
    max_pixels: int = Field(
        4096 * 4096,
        gt=0,
        description=(
            "Refuse images with more pixels (413, read from the header before decoding). The "
            "default, 16.8 Mpx (4096x4096, a 12 Mpx phone photo passes), holds about 50 MB "
            "decoded; a 6300x6300 PNG of 39 KB would take 151 MB."
        ),
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std value must be > 0")
        return v


class ExplainSettings(StrictModel):
    """How explanations (``/explanations``, KServe ``:explain``) are computed for a model.

    Integrated Gradients costs ``n_steps`` forward and backward passes per input; they run in
    chunks of ``internal_batch_size`` on the replica's inference thread, so a prediction batch
    waits for at most one chunk (docs/explanations.md).
    """

    n_steps: int = Field(
        50, ge=1, le=1000, description="Integrated Gradients steps when the request names none."
    )
    max_steps: int = Field(
        200, ge=1, le=1000, description="The most steps a request may ask for (`?n_steps=`); above: 400."
    )
    internal_batch_size: int = Field(
        8, ge=1, le=256, description="Steps run together: one chunk of work between prediction batches."
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> ExplainSettings:
        if self.n_steps > self.max_steps:
            raise ValueError(f"n_steps ({self.n_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class ModelSpec(StrictModel):
    """Everything a handler needs to load a model and answer requests for it."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Model name used in URLs.")
    version: str = Field(DEFAULT_VERSION, pattern=VERSION_PATTERN, description="Model version.")
    handler: str = Field(
        "image_classifier",
        description=(
            "A default handler name, an import path 'pkg.module:HandlerClass', a file "
            "'path/handler.py:HandlerClass', or 'torchserve:handler.py[:function]' for a TorchServe "
            "handler file. TorchServe's names of its default handlers ('ts.torch_handler."
            "image_classifier', 'ts/torch_handler/image_classifier.py:handle') mean ours."
        ),
    )
    source: ModelSource | None = Field(
        None,
        description=(
            "How to build the network and its weights. Required, except for a TorchServe handler "
            "file, which loads the model its archive names itself."
        ),
    )
    labels: str | None = Field(
        None,
        description=(
            "'imagenet' for torchvision's ImageNet categories, 'weights' for the categories of "
            "the torchvision weights (or of a factory's model: its `categories` attribute), or "
            "a TorchServe index_to_name.json path. Default: those categories when there are "
            "some, else class indices."
        ),
    )
    preprocess: ImagePreprocess = Field(
        default_factory=ImagePreprocess, description="Image preprocessing parameters."
    )
    top_k: int = Field(5, ge=1, le=1000, description="How many classes a classifier returns.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses a GPU when the replica has one, else the CPU."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch intra-op threads per batch. Default (served): every core of the machine while "
            "no other model replica on it is busy, an equal share once several are."
        ),
    )
    warmup: bool = Field(True, description="Run one dummy batch at load so the first request is fast.")
    channels_last: bool | None = Field(
        None,
        description=(
            "Run convolutions on channels-last tensors (oneDNN's fast path on CPU, tensor cores "
            "on GPU). Default: on for image classifiers (measured 1.1-2x faster per batch on "
            "EfficientNet-Lite0, ResNet-18 and DenseNet-161), off for other handlers."
        ),
    )
    base_dir: str | None = Field(
        None,
        description="Directory that relative file paths in this spec are resolved against (archives).",
    )
    options: dict[str, object] = Field(
        default_factory=dict,
        description="Handler-specific settings, validated by the handler's own `Options` model.",
    )
    explain: ExplainSettings = Field(
        default_factory=ExplainSettings, description="Explanations: Integrated Gradients steps and chunking."
    )

    @field_validator("handler")
    @classmethod
    def _torchserve_names(cls, value: str) -> str:
        return default_handler_alias(value) or value

    @model_validator(mode="after")
    def _source_unless_torchserve(self) -> ModelSpec:
        if self.source is None and not self.handler.startswith(TORCHSERVE_PREFIX):
            raise ValueError("`source` is required (how to build the network and its weights)")
        return self
