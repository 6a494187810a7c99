"""How TorchServe names handlers, and what each name becomes here. No torch, no Ray.

TorchServe takes a default handler's name (``image_classifier``), its module or file
(``ts.torch_handler.image_classifier``, ``ts/torch_handler/image_classifier.py:handle``), or a
handler file shipped in the archive (``mnist_handler.py``, ``my_handler.py:handle``). The
default handlers become raytorch's handlers of the same name; a file in the archive becomes
``torchserve:<file>[:<function>]``, run by :mod:`handlers.torchserve.adapter`.
"""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import re
from pathlib import Path, PurePosixPath

from handlers.errors import ConfigError

TORCHSERVE_PREFIX = "torchserve:"
TS_API_ENV = "RAYTORCH_TS_API"  # auto | torchserve | raytorch: which `ts` handler files import
# TorchServe's default handlers that raytorch has its own (better checked) version of.
DEFAULT_HANDLER_NAMES = ("image_classifier", "image_segmenter", "object_detector", "text_classifier")
# The modules of TorchServe's `ts` package that raytorch's own handler API provides
# (handlers.torchserve.ts_api), and where; a handler file importing others needs TorchServe's.
TS_API_MODULES = {
    "ts.context": "handlers.torchserve.ts_api.context",
    "ts.torch_handler.base_handler": "handlers.torchserve.ts_api.base_handler",
    "ts.torch_handler.vision_handler": "handlers.torchserve.ts_api.vision",
    "ts.torch_handler.image_classifier": "handlers.torchserve.ts_api.vision",
    "ts.torch_handler.image_segmenter": "handlers.torchserve.ts_api.vision",
    "ts.torch_handler.object_detector": "handlers.torchserve.ts_api.vision",
    "ts.utils.util": "handlers.torchserve.ts_api.util",
    "ts.handler_utils.timer": "handlers.torchserve.ts_api.util",
    "ts.handler_utils.utils": "handlers.torchserve.ts_api.streaming",
    "ts.protocol.otf_message_handler": "handlers.torchserve.ts_api.streaming",
    "ts.torch_handler.text_handler": "handlers.torchserve.ts_api.text",
    "ts.torch_handler.text_classifier": "handlers.torchserve.ts_api.text",
    "ts.handler_utils.text_utils": "handlers.torchserve.ts_api.text",
    "ts.handler_utils.micro_batching": "handlers.torchserve.ts_api.micro_batching",
    "ts.metrics.dimension": "handlers.torchserve.ts_api.metrics",
    "ts.metrics.metric_type_enum": "handlers.torchserve.ts_api.metrics",
    "ts.metrics.metric": "handlers.torchserve.ts_api.metrics",
}
TS_API_PACKAGES = ("ts", "ts.torch_handler", "ts.utils", "ts.handler_utils", "ts.protocol", "ts.metrics")
# A .mar naming one of these default handlers runs TorchServe's class itself (ours, or
# TorchServe's package when installed), so it answers exactly as on TorchServe: per-pixel
# lists, unrounded boxes, source_vocab.pt. Our richer handlers of the same names serve our
# own configs and archives. (A .mar's image_classifier already answers alike with ours.)
TS_DEFAULT_CLASSES = {
    "image_segmenter": "ImageSegmenter",
    "object_detector": "ObjectDetector",
    "text_classifier": "TextClassifier",
}
TS_DEFAULT_MODULE = "ts.torch_handler."
_FUNCTION = re.compile(r"[A-Za-z_]\w*")


def split_ref(handler: str) -> tuple[str, str | None]:
    """``'dir/file.py:handle'`` -> ``('dir/file.py', 'handle')``; no function -> None."""
    module, sep, function = handler.partition(":")
    return module, (function if sep else None)


def default_handler_alias(handler: str) -> str | None:
    """Our handler for TorchServe's name of one of its default handlers, or None.

    ``ts.torch_handler.image_classifier``, ``serve/ts/torch_handler/image_classifier.py:handle``
    and ``image_classifier:handle`` all mean raytorch's ``image_classifier``. A bare file name
    (``image_classifier.py``) is not decided here: it may be a file of the archive.
    """
    if handler.startswith(TORCHSERVE_PREFIX):
        return None
    module, function = split_ref(handler)
    if module.startswith("ts.torch_handler."):
        name = module.removeprefix("ts.torch_handler.")
    elif "ts/torch_handler/" in module or (function is not None and "/" not in module and "." not in module):
        name = PurePosixPath(module).name.removesuffix(".py")
    else:
        return None
    return name if name in DEFAULT_HANDLER_NAMES else None


def mar_handler(handler: str, folder: Path) -> str:
    """What a TorchServe archive's handler (its manifest's, or the register request's) means.

    As TorchServe's worker does, a file name is looked up in the archive's root first
    (the archiver copies the handler there), and a default handler's name comes next: the
    segmenter, detector and text classifier become TorchServe's own classes
    (``torchserve:ts.torch_handler.<name>``), the image classifier ours (it answers alike).
    """
    if handler.startswith(TORCHSERVE_PREFIX):
        return handler
    module, function = split_ref(handler)
    if function is not None and not _FUNCTION.fullmatch(function):
        raise ConfigError(f"Invalid handler {handler!r}: the part after ':' must be a function name")
    base = PurePosixPath(module).name.removesuffix(".py")
    if base and (folder / f"{base}.py").is_file():
        return f"{TORCHSERVE_PREFIX}{base}.py" + (f":{function}" if function else "")
    alias = default_handler_alias(handler) or (base if base in DEFAULT_HANDLER_NAMES else None)
    if alias in TS_DEFAULT_CLASSES:
        return f"{TORCHSERVE_PREFIX}{TS_DEFAULT_MODULE}{alias}"
    if alias is not None:
        return alias
    raise ConfigError(
        f"Unknown handler {handler!r}: it is neither a file in the archive nor one of TorchServe's "
        f"default handlers ({', '.join(DEFAULT_HANDLER_NAMES)})"
    )


def default_handler_class(file: str) -> tuple[str, str] | None:
    """``ts.torch_handler.image_segmenter`` -> (that module, ``ImageSegmenter``): the TorchServe
    default handler a .mar's ``torchserve:`` reference names; None for a file of the archive."""
    name = file.removeprefix(TS_DEFAULT_MODULE)
    if file.startswith(TS_DEFAULT_MODULE) and name in TS_DEFAULT_CLASSES:
        return file, TS_DEFAULT_CLASSES[name]
    return None


def mar_model_file(folder: str | None) -> str | None:
    """The eager model file (``model.py``) an extracted .mar's manifest names, if any: the
    archive code a default handler runs."""
    manifest = Path(folder or ".") / "MAR-INF" / "MANIFEST.json"
    try:
        model = json.loads(manifest.read_text(encoding="utf-8")).get("model") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return (model.get("modelFile") or None) if isinstance(model, dict) else None


def parse_torchserve_ref(handler: str) -> tuple[str, str | None]:
    """``torchserve:file.py[:function]`` -> (file, function)."""
    return split_ref(handler.removeprefix(TORCHSERVE_PREFIX))


def real_ts_installed() -> bool:
    """True when TorchServe's own ``ts`` package is on the path (whether or not ours stands in
    for it in this process)."""
    return importlib.machinery.PathFinder.find_spec("ts") is not None


def uses_real_ts() -> bool:
    """Whether handler files get TorchServe's own ``ts`` package: ``RAYTORCH_TS_API=auto`` (the
    default) uses it when installed, ``torchserve`` requires it, ``raytorch`` never uses it."""
    choice = os.environ.get(TS_API_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "torchserve", "raytorch"):
        raise ConfigError(f"{TS_API_ENV}={choice!r}: use auto, torchserve or raytorch")
    if choice == "raytorch":
        return False
    if real_ts_installed():
        return True
    if choice == "torchserve":
        raise ConfigError(f"{TS_API_ENV}=torchserve, but TorchServe is not installed: pip install torchserve")
    return False


def check_handler_file(handler: str, folder: str | None) -> None:
    """Check a TorchServe handler file without running it (no code runs in the management
    process): it exists in the archive, parses, defines its entry point, and imports only
    the parts of ``ts`` that are available. Raises ConfigError saying what is wrong."""
    name, function = parse_torchserve_ref(handler)
    if default_handler_class(name) is not None:
        uses_real_ts()  # RAYTORCH_TS_API is valid (its modules are ours or TorchServe's)
        return
    path = Path(folder or ".") / name
    if PurePosixPath(name).name != name or not path.is_file():
        raise ConfigError(f"Handler file {name} is not in the archive")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"Handler file {name} is not valid Python: {exc}") from None
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    if (function or "handle") not in functions and len(classes) != 1:
        raise ConfigError(
            f"Handler file {name} must define one class, or a function {function or 'handle'}(data, "
            f"context); it defines {len(classes)} classes ({', '.join(classes) or 'none'})"
        )
    if uses_real_ts():
        return
    for node in ast.walk(tree):
        wanted = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            wanted = [node.module]
        elif isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        for module in wanted:
            known = module in TS_API_MODULES or module in TS_API_PACKAGES
            if (module == "ts" or module.startswith("ts.")) and not known:
                raise ConfigError(
                    f"Handler file {name} imports {module}, which raytorch's TorchServe handler API "
                    "does not provide: install TorchServe's own (pip install torchserve) to use it"
                )
