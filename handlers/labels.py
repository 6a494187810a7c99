"""Class labels: TorchServe's ``index_to_name.json`` or torchvision's ImageNet categories."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

from handlers.errors import ModelLoadError


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names torchvision ships (no download needed).

    Read from torchvision's source without importing it when its layout is the known one:
    importing any part of torchvision runs its package ``__init__``, which imports every model
    and, through ``torchvision.ops``, ``torch._dynamo`` (1.5 s of a model replica's start on
    a 2-core VM, for a model that needs nothing else of torchvision, such as the quickstart's).
    """
    categories = _categories_from_source()
    if categories is not None:
        return categories
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _categories_from_source() -> list[str] | None:
    """``torchvision.models._meta._IMAGENET_CATEGORIES`` read as a literal, or None when it is
    not where or what it was (tests/unit/test_labels.py compares it with the import)."""
    spec = importlib.util.find_spec("torchvision")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        tree = ast.parse(Path(spec.submodule_search_locations[0], "models", "_meta.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
                "_IMAGENET_CATEGORIES"
            ]:
                categories = ast.literal_eval(node.value)
                if isinstance(categories, list) and len(categories) == 1000:
                    return [str(name) for name in categories]
    except (OSError, SyntaxError, ValueError):
        return None
    return None


def read_index_to_name(path: Path) -> list[str]:
    """Read ``{"0": "tench"}`` or ``{"0": ["n01440764", "tench"]}`` into a dense list."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot read label file {path}: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError(f"{path} must be a JSON object mapping class index to name")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        try:
            index = int(key)
        except ValueError:
            raise ModelLoadError(f"{path}: key {key!r} is not a class index") from None
        if isinstance(value, list) and value:
            value = value[-1]
        if not isinstance(value, str):
            raise ModelLoadError(f"{path}: label of class {key} is not a string")
        labels[index] = value
    return [labels.get(i, str(i)) for i in range(max(labels) + 1)]


def resolve_labels(
    setting: str | None, from_weights: list[str] | None, base_dir: str | None = None
) -> list[str] | None:
    """Pick the label list for a spec's ``labels`` setting (see ModelSpec.labels)."""
    if setting is None:
        return from_weights
    if setting == "imagenet":
        return imagenet_categories()
    if setting == "weights":
        if not from_weights:
            raise ModelLoadError("labels: 'weights' but the model's weights carry no categories")
        return from_weights
    from handlers.loading import resolve_path

    return read_index_to_name(resolve_path(setting, base_dir))
