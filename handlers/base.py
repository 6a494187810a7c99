"""The handler lifecycle every model goes through.

``load()`` once per replica; ``preprocess()`` per request, before batching, so a bad input
fails alone; ``inference()`` once per batch; ``postprocess()`` splits the batch output into
exactly one result per request. Subclasses override the few steps that differ.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from handlers.errors import (
    BadInputError,
    ConfigError,
    InferenceError,
    NotImplementedFeatureError,
    RaytorchError,
)
from handlers.explain import ExplainRequest, Steps
from handlers.labels import resolve_labels
from handlers.loading import build_model
from handlers.options import NoOptions, parse_options
from handlers.spec import ModelSpec, StrictModel
from handlers.tensor_data import BYTES, TensorRequest

# What a handler that decodes media (images, audio, text) takes and returns over the Open
# Inference Protocol: one encoded input per element, one JSON document per element.
BYTES_INPUT = {"name": "data", "datatype": BYTES, "shape": [-1]}
BYTES_OUTPUT = {"name": "output-0", "datatype": BYTES, "shape": [-1]}

logger = logging.getLogger("raytorch.handlers")


class BaseHandler(ABC):
    """Loads a model from a :class:`ModelSpec` and runs batches through it.

    Subclasses declare their settings as a pydantic model in ``Options``; the spec's
    ``options`` block is validated against it when the handler is created.
    """

    Options: type[StrictModel] = NoOptions
    # Whether channels_last is the default for this handler's models (spec.channels_last wins).
    prefers_channels_last = False

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.options = parse_options(self.Options, spec.options, spec.handler)
        self.model: nn.Module | None = None
        self.labels: list[str] | None = None
        self.device = torch.device("cpu")
        self.channels_last = False
        self.load_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Build the model, move it to its device, and warm it up."""
        started = time.perf_counter()
        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        self.device = self.select_device()
        if self.spec.source is None:
            raise ConfigError(f"Model {self.spec.name} has no `source` to load its network from")
        model, categories = build_model(self.spec.source, self.spec.base_dir)
        self.labels = resolve_labels(self.spec.labels, categories, self.spec.base_dir)
        self.model = model.to(self.device).eval()
        self.channels_last = self._wants_channels_last(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.spec.warmup:
            self.warmup()
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "Loaded model %s version %s on %s in %.2fs (torch threads %d)",
            self.spec.name,
            self.spec.version,
            self.device,
            self.load_seconds,
            torch.get_num_threads(),
        )

    def select_device(self) -> torch.device:
        """The device named by the spec; 'auto' takes a GPU only when one is visible."""
        if self.spec.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' was requested but no GPU is visible to this replica: set "
                "`device: auto` (or cpu), or give the model `num_gpus` on a cluster with GPUs"
            )
        if self.spec.device == "cpu" or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda")

    def warmup(self) -> None:
        """Run one example batch so lazy initialisation is not paid by the first user.

        A probe that does not fit the model (a custom model's input the handler cannot
        guess, such as a grayscale 28x28 network behind image_classifier) is logged and
        skipped: it must never stop a model that would serve its real requests.
        """
        try:
            example = self.example_input()
            if example is not None:
                self.predict_batch([example])
        except Exception as exc:
            logger.warning(
                "Warm-up of model %s version %s skipped: the example input does not fit the model (%s)",
                self.spec.name,
                self.spec.version,
                exc,
            )

    def example_input(self) -> Any:
        """A preprocessed input for warm-up, or None to skip it (the default)."""
        return None

    @abstractmethod
    def preprocess(self, data: bytes, content_type: str | None = None) -> Any:
        """Decode and validate one request body; raise a RaytorchError for bad input."""

    def collate(self, items: list[Any]) -> Any:
        """Join preprocessed items into one batch (stacked tensors by default)."""
        return torch.stack(items)

    def inference(self, batch: Any) -> Any:
        """Run the model once over a batch."""
        assert self.model is not None, "load() must run before inference()"
        if self.channels_last and batch.dim() == 4:
            batch = batch.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        else:
            batch = batch.to(self.device, non_blocking=True)
        with torch.inference_mode():
            return self.model(batch)

    def _wants_channels_last(self, model: nn.Module) -> bool:
        wanted = (
            self.spec.channels_last if self.spec.channels_last is not None else self.prefers_channels_last
        )
        # Only modules with 4-D (convolution) weights gain; ONNX-backed models have none here.
        return bool(wanted) and any(p.dim() == 4 for p in model.parameters())

    def preprocess_tensors(self, request: TensorRequest) -> Any:
        """Check one request's numeric tensors (Open Inference Protocol); raise a RaytorchError
        for bad input. Handlers that decode media take BYTES only, so the default refuses."""
        sent = ", ".join(f"{t.name} ({t.datatype})" for t in request.inputs)
        raise BadInputError(
            f"Model {self.spec.name} (handler {self.spec.handler}) takes encoded inputs: send each "
            f"as an element of a BYTES tensor, not numeric tensors ({sent})"
        )

    def signature(self) -> dict[str, Any]:
        """The model's inputs and outputs as Open Inference metadata (``platform``, ``inputs``,
        ``outputs``: lists of ``{name, datatype, shape}``)."""
        source = self.spec.source
        platform = (
            "pytorch_torchscript" if source.torchscript else "onnx_onnxv1" if source.onnx else "pytorch"
        )
        return {"platform": platform, "inputs": [dict(BYTES_INPUT)], "outputs": [dict(BYTES_OUTPUT)]}

    @abstractmethod
    def postprocess(self, output: Any, items: list[Any]) -> list[Any]:
        """Split a batch output into one JSON-serialisable result per request.

        ``items`` are the batch's preprocessed requests, in order (what ``preprocess``
        returned), for handlers whose answer needs more than the model output (a photo's size).
        """

    def describe(self) -> Any:
        """What ``GET /models/{m}?customized=true`` shows of this handler (TorchServe's
        "customized metadata"): which handler, on which device, its classes and settings."""
        return {
            "handler": self.spec.handler,
            "handlerClass": f"{type(self).__module__}.{type(self).__qualname__}",
            "device": str(self.device),
            "classes": len(self.labels) if self.labels else None,
            "topK": self.spec.top_k,
            "options": self.options.model_dump(mode="json"),
            "loadSeconds": round(self.load_seconds, 3) if self.load_seconds is not None else None,
        }

    def label(self, index: int) -> str:
        """The class name of ``index``, or the index itself when no label is known."""
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    # -- driver ----------------------------------------------------------------------------
    def predict_batch(self, items: list[Any]) -> list[Any]:
        """Collate, infer and postprocess; exactly one result per item or an error."""
        if not items:
            return []
        try:
            results = self.postprocess(self.inference(self.collate(items)), items)
        except RaytorchError:
            raise
        except Exception as exc:
            raise InferenceError(f"Model {self.spec.name} failed on a batch of {len(items)}: {exc}") from exc
        if len(results) != len(items):
            raise InferenceError(
                f"Handler of {self.spec.name} returned {len(results)} results for {len(items)} requests"
            )
        return results

    def predict(self, data: bytes, content_type: str | None = None) -> Any:
        """One request end to end, without batching (CLI, tests, debugging)."""
        return self.predict_batch([self.preprocess(data, content_type)])[0]

    # -- explanations and partial answers ----------------------------------------------------
    def explain_input(self, data: bytes, content_type: str | None = None) -> Any:
        """Decode one input for :meth:`explain` (what ``preprocess`` makes of it by default);
        501 before decoding for a handler that has no explanations."""
        if type(self).explain is BaseHandler.explain:
            self.explain(data, ExplainRequest())
        return self.preprocess(data, content_type)

    def explain(self, item: Any, request: ExplainRequest) -> Steps:
        """Attributions of one decoded input (:mod:`handlers.explain`): a generator that yields
        between chunks of model work and returns the explanation. Without one: 501."""
        raise NotImplementedFeatureError(
            f"Model {self.spec.name} (handler {self.spec.handler}) has no explanations"
        )

    def predict_stream(self, item: Any) -> Iterator[Any]:
        """Partial answers of one decoded input, yielded as they are ready (streamed to the
        client). By default the whole answer is the one part; a handler that finds its answer
        piece by piece (speech segments, generated tokens) yields each piece."""
        yield self.predict_batch([item])[0]

    def stream_into(self, item: Any, emit: Callable[[Any], None]) -> None:
        """Run :meth:`predict_stream`, handing each part to ``emit`` as soon as it exists.

        ``emit`` raises :class:`StreamCancelled` once the client is gone; the generator is
        closed then, so its ``finally`` blocks run and it produces nothing more.
        """
        parts = self.predict_stream(item)
        try:
            for part in parts:
                emit(part)
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()
