"""``ts.utils.util`` and ``ts.handler_utils.timer``: the helpers TorchServe handlers import."""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("raytorch.handlers")


class PredictionException(Exception):
    """Raised by a handler to answer with its own status (``error_code``) and message."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: Any, parent_class: type | None = None) -> list[type]:
    """The classes defined in ``module`` itself (not imported into it), optionally only the
    subclasses of ``parent_class``: how TorchServe finds a file's model or handler class."""
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module.__name__
    ]
    if parent_class is not None:
        classes = [c for c in classes if issubclass(c, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """``index_to_name.json`` as ``{"0": "tench"}`` (``["n01440764", "tench"]`` values keep
    their last element); None when the file is absent."""
    path = Path(mapping_file_path)
    if not path.is_file():
        logger.info("%s is missing: answers will name classes by index", path.name)
        return None
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        raise ValueError('index_to_name.json must be an object {"class index": "label"}')
    if isinstance(mapping.get("object_type_names"), list):  # an older layout of the file
        return {str(i): name for i, name in enumerate(mapping["object_type_names"])}
    labels = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError("labels in index_to_name.json must be strings or lists of strings")
        labels[str(key)] = label
    return labels


def map_class_to_label(
    probs: list, mapping: dict[str, str] | None = None, lbl_classes: list | None = None
) -> list[dict[str, Any]]:
    """One ``{label: probability}`` dict per row; labels from ``mapping`` or the index itself."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("Mapping must be a dict")
    rows = lbl_classes if lbl_classes is not None else itertools.repeat(range(len(probs[0])), len(probs))
    # Not strict, as TorchServe: a row of classes longer than its probabilities is cut short.
    return [
        {
            (mapping[str(cls)] if mapping is not None else str(cls)): prob
            for cls, prob in zip(classes, row, strict=False)
        }
        for classes, row in zip(rows, probs, strict=False)
    ]


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    """A YAML file as a dict."""
    return yaml.safe_load(Path(yaml_file_path).read_text(encoding="utf-8")) or {}


def timed(func: Callable[..., Any]) -> Callable[..., Any]:
    """Time a handler step when the model's model-config.yaml says ``handler: {profile: true}``
    (reported through the context's metrics, as in TorchServe)."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = getattr(self, "context", None)
        profile = bool(context and (context.model_yaml_config.get("handler") or {}).get("profile"))
        if not profile:
            return func(self, *args, **kwargs)
        started = time.perf_counter()
        result = func(self, *args, **kwargs)
        context.metrics.add_time(f"ts_handler_{func.__name__}", (time.perf_counter() - started) * 1000)
        return result

    return wrapper
