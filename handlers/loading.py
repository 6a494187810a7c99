"""Build an ``nn.Module`` from a :class:`~handlers.spec.ModelSource`.

Four forms: a torchvision architecture with its weights, a TorchScript file, an ONNX file
(run by onnxruntime), or a user's factory plus a state_dict. Pickled weights are always read
with ``weights_only=True``.
Weights that must be downloaded are fetched with a bounded timeout, and every failure
becomes a :class:`~handlers.errors.ModelLoadError` that tells the user what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import torch
from torch import nn

from handlers.archive_imports import archive_modules
from handlers.errors import ModelLoadError
from handlers.onnx_model import OnnxModel
from handlers.spec import ModelSource

PKG_SCHEME = "pkg://"
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def resolve_path(ref: str, base_dir: str | None = None) -> Path:
    """Turn a path or ``pkg://package/relative/path`` into an existing file path.

    Relative paths are taken from ``base_dir`` when given (an extracted model archive).
    """
    if ref.startswith(PKG_SCHEME):
        package, _, relative = ref[len(PKG_SCHEME) :].partition("/")
        if PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
            raise ModelLoadError(f"{ref!r} leaves its package: name a file inside it")
        path = package_dir(package, ref) / relative
    else:
        path = Path(ref).expanduser()
        if base_dir and not path.is_absolute():
            path = Path(base_dir) / path
    if not path.is_file():
        raise ModelLoadError(f"Weights or model file not found: {ref} (looked at {path})")
    return path


def package_dir(package: str, ref: str) -> Path:
    """The folder of an installed package, found without importing it.

    Weight-carrying packages may import heavy or conflicting dependencies in their
    ``__init__`` (facenet-pytorch wants tqdm, rembg wants OpenCV); reading a data file
    must not run that code. A dotted name imports its parent packages (Python's rule).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(f"Package {package!r} named in {ref!r} is not installed: pip install it.")
    return Path(locations[0])


def _module_from_file(path: Path, base_dir: str | Path | None = None) -> object:
    """A file of an archive (``base_dir``) as one of its archive's modules, which import
    their neighbours by name; any other file as a module of its own. Both are named after
    their contents, so changed code is always imported anew."""
    path = path.resolve()
    if base_dir is not None and path.is_relative_to(Path(base_dir).resolve()):
        return archive_modules(base_dir).load_file(path)
    source = path.read_bytes()
    digest = hashlib.sha256(str(path).encode() + b"\0" + source).hexdigest()
    name = f"raytorch_user_{digest[:20]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_module_file(path: str | Path, base_dir: str | Path | None = None) -> object:
    """Import a Python file (of the archive in ``base_dir``, when given) once per contents."""
    return _module_from_file(Path(path), base_dir)


def import_object(import_path: str, base_dir: str | None = None) -> object:
    """Import ``package.module:attribute`` or ``path/file.py:attribute`` and return the attribute."""
    module_name, _, attribute = import_path.rpartition(":")
    try:
        if module_name.endswith(".py"):
            obj: object = _module_from_file(resolve_path(module_name, base_dir), base_dir)
        else:
            obj = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except ModelLoadError:
        raise
    except Exception as exc:  # user code may raise anything at import time
        raise ModelLoadError(f"Cannot import {import_path!r}: {type(exc).__name__}: {exc}") from exc
    return obj


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict safely (no arbitrary pickles)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise ModelLoadError(f"Cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state_dict (found {type(state).__name__})")
    return state


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` strictly, explaining mismatches in one line."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"Weights from {origin} do not fit the model: {first_line}") from exc


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's downloader takes no timeout; an unreachable host would otherwise hang load.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def hub_cache_path(url: str) -> Path:
    """Where torch hub keeps (or would keep) the file behind ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def ensure_weights_cached(weights: object, timeout_s: float) -> Path:
    """Make sure a torchvision weights enum's file is in the hub cache; download if allowed."""
    url = weights.url  # type: ignore[attr-defined]
    target = hub_cache_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(timeout_s):
            torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "not available here"
        raise ModelLoadError(
            f"ImageNet weights {weights} are not in the torch hub cache ({target}) and could not be "
            f"downloaded from {url}: {exc}. To fix: copy that file to {target} (set TORCH_HOME to "
            "move the cache), or point `source.weights` at a local state_dict file, or set "
            "`source.weights: null` for random weights, or serve configs/quickstart.yaml, which "
            "ships its weights and works offline."
        ) from exc
    return target


def _torchvision_weights(architecture: str, name: str) -> object:
    from torchvision import models

    enum = models.get_model_weights(architecture)
    member = name.split(".")[-1]
    if member == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[member]
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ModelLoadError(
            f"Unknown weights {name!r} for {architecture}; choose one of {choices}, "
            "a state_dict file path, or null."
        ) from None


def _build_random(builder: Callable[..., nn.Module]) -> nn.Module:
    """Random initialisation without any download.

    Detection and segmentation builders default to ImageNet *backbone* weights even when
    ``weights=None``; those would be downloaded and then overwritten or unwanted anyway.
    """
    if "weights_backbone" in inspect.signature(builder).parameters:
        return builder(weights=None, weights_backbone=None)
    return builder(weights=None)


def build_torchvision(source: ModelSource, base_dir: str | None = None) -> tuple[nn.Module, list[str] | None]:
    """A torchvision architecture, with the categories of its weights when it has some."""
    from torchvision import models

    arch = source.architecture or ""
    try:
        builder: Callable[..., nn.Module] = models.get_model_builder(arch)
    except ValueError:
        raise ModelLoadError(
            f"Unknown torchvision architecture {arch!r}; see torchvision.models.list_models()."
        ) from None
    weights = source.weights
    if weights is None:
        return _build_random(builder), None
    if weights.endswith(WEIGHT_FILE_SUFFIXES) or os.sep in weights or weights.startswith(PKG_SCHEME):
        path = resolve_path(weights, base_dir)
        model = _build_random(builder)
        apply_state_dict(model, load_state_dict_file(path), str(path))
        return model, None
    enum_weights = _torchvision_weights(arch, weights)
    ensure_weights_cached(enum_weights, source.download_timeout_s)
    # The builder itself loads from the cache now; it also fixes legacy key names (DenseNet).
    model = builder(weights=enum_weights)
    return model, list(enum_weights.meta.get("categories") or []) or None  # type: ignore[attr-defined]


def build_model(source: ModelSource, base_dir: str | None = None) -> tuple[nn.Module, list[str] | None]:
    """Build the module described by ``source``; also return categories known from its weights."""
    if source.architecture:
        return build_torchvision(source, base_dir)
    if source.torchscript:
        path = resolve_path(source.torchscript, base_dir)
        try:
            return torch.jit.load(str(path), map_location="cpu"), None
        except Exception as exc:
            raise ModelLoadError(f"Cannot load TorchScript file {path}: {exc}") from exc
    if source.onnx:
        return OnnxModel(resolve_path(source.onnx, base_dir)), None
    factory = import_object(source.factory or "", base_dir)
    if not callable(factory):
        raise ModelLoadError(f"{source.factory!r} is not callable")
    try:
        model = factory(**source.factory_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"Model factory {source.factory} failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{source.factory} returned {type(model).__name__}, not an nn.Module")
    if source.state_dict:
        path = resolve_path(source.state_dict, base_dir)
        apply_state_dict(model, load_state_dict_file(path), source.state_dict)
    # A factory knows its model's classes as torchvision's weights do (handlers.zoo's models).
    categories = getattr(model, "categories", None)
    return model, list(categories) if categories else None
