"""``ts.torch_handler.base_handler.BaseHandler``: TorchServe's handler lifecycle.

``initialize(context)`` loads the archive's model (an eager model file plus its state_dict,
or a TorchScript file) and its ``index_to_name.json``; ``handle(data, context)`` runs
``preprocess`` -> ``inference`` -> ``postprocess`` over a batch of request dicts. Weights are
read with ``weights_only=True``, as everywhere in raytorch.
"""

from __future__ import annotations

import abc
import logging
import os
from typing import Any

import torch

from handlers.loading import load_module_file
from handlers.torchserve.ts_api.util import list_classes_from_module, load_label_mapping, timed

logger = logging.getLogger("raytorch.handlers")


class BaseHandler(abc.ABC):  # noqa: B024 - abstract in name only, as TorchServe's is
    """Loads the archive's model and runs batches through it; subclasses override steps."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Any = None
        self.model_pt_path: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}
        self.model_yaml_config: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        """Pick the device, load the model named by the manifest, and the label mapping."""
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        properties = context.system_properties
        gpu = properties.get("gpu_id")
        if gpu is not None and torch.cuda.is_available():
            self.map_location, self.device = "cuda", torch.device(f"cuda:{gpu}")
        else:
            self.map_location, self.device = "cpu", torch.device("cpu")
        self.manifest = context.manifest or {}
        model_dir = properties.get("model_dir")
        model = self.manifest.get("model", {})
        serialized = model.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        model_file = model.get("modelFile", "")
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif self.model_pt_path and self.model_pt_path.endswith(".pt"):
            self.model = self._load_torchscript_model(self.model_pt_path)
            self.model.eval()
        else:
            raise RuntimeError(
                "No model weights could be loaded: the archive needs a model file with a state_dict, "
                "or a TorchScript .pt file (ONNX and AOT-compiled files need TorchServe's own package)"
            )
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str | None) -> Any:
        """The one class defined in ``model_file``, built without arguments, with the weights."""
        path = os.path.join(model_dir, model_file)
        if not os.path.isfile(path):
            raise RuntimeError(f"Missing the model file {model_file}")
        classes = list_classes_from_module(load_module_file(path, model_dir))
        if len(classes) != 1:
            raise ValueError(f"Expected only one class as model definition. {classes}")
        model = classes[0]()
        if model_pt_path:
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        return model

    @timed
    def preprocess(self, data: list[Any]) -> Any:
        """The batch's request dicts as a tensor (subclasses decode their inputs)."""
        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """The model over one batch."""
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        """One JSON-serialisable answer per request."""
        return data.tolist()

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """TorchServe's entry point: a batch of request dicts in, one answer per request out."""
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        if self._is_explain():
            return self.explain_handle(self.preprocess(data), data)
        return self.postprocess(self.inference(self.preprocess(data)))

    def _is_explain(self) -> bool:
        return bool(self.context and self.context.get_request_header(0, "explain") == "True")

    def _is_describe(self) -> bool:
        return bool(self.context and self.context.get_request_header(0, "describe") == "True")

    def describe_handle(self) -> Any:
        """Customised metadata for ``GET /models/{m}?customized=true`` (None by default)."""
        return None

    def explain_handle(self, data_preprocess: Any, raw_data: Any) -> Any:
        """Captum explanations: the first request's ``target`` (0 when absent, as TorchServe)
        and its input go to ``get_insights`` with the preprocessed batch."""
        row = raw_data[0] if raw_data else None
        inputs, target = None, 0
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        get_insights = getattr(self, "get_insights", None)
        if get_insights is None:
            raise NotImplementedError(f"{type(self).__name__} has no get_insights: no explanations")
        return get_insights(data_preprocess, inputs, target)

    def get_device(self) -> torch.device | None:
        return self.device
