"""Find a handler class by default-handler name, import path, or Python file path."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from handlers.base import BaseHandler
from handlers.errors import ConfigError, ModelLoadError
from handlers.loading import import_object
from handlers.spec import ModelSpec

DEFAULT_HANDLERS = {
    "image_classifier": "handlers.image_classifier:ImageClassifier",
    "object_detector": "handlers.object_detector:ObjectDetector",
    "image_segmenter": "handlers.image_segmenter:ImageSegmenter",
    "text_classifier": "handlers.text_classifier:TextClassifier",
    "audio_classifier": "handlers.audio_classifier:AudioClassifier",
}


def load_from_file(file_name: str, attribute: str) -> object:
    """Import a ``.py`` file as a module of its own and return one of its attributes.

    The module name is derived from the file's absolute path, so two files called
    ``handler.py`` never replace each other in ``sys.modules``.
    """
    path = Path(file_name).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"Handler file not found: {file_name} (looked at {path})")
    module_name = f"raytorch_user_handler_{hashlib.sha1(str(path).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"Cannot import handler file {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as `import` does: dataclasses and pickling look it up there.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # whatever the user's module raises at import time
        del sys.modules[module_name]
        raise ConfigError(f"Handler file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"Handler file {path} defines no {attribute!r}") from None


def handler_class(name: str) -> type[BaseHandler]:
    """Resolve ``name`` to a class: a default handler ('image_classifier'), an import path
    ('pkg.module:MyHandler'), or a Python file and class ('path/to/my_handler.py:MyHandler')."""
    import_path = DEFAULT_HANDLERS.get(name, name)
    if ":" not in import_path:
        known = ", ".join(sorted(DEFAULT_HANDLERS))
        raise ConfigError(
            f"Unknown handler {name!r}: use one of {known}, 'package.module:Class' or 'file.py:Class'"
        )
    location, _, attribute = import_path.rpartition(":")
    if location.endswith(".py"):
        cls = load_from_file(location, attribute)
    else:
        try:
            cls = import_object(import_path)
        except ModelLoadError as exc:
            raise ConfigError(f"Handler {name!r} cannot be imported: {exc.message}") from exc
        except Exception as exc:  # the module itself raised while importing
            raise ConfigError(f"Handler {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseHandler)):
        raise ConfigError(f"Handler {name!r} is not a subclass of handlers.base.BaseHandler")
    return cls


def create_handler(spec: ModelSpec) -> BaseHandler:
    """Instantiate (but do not load) the handler a spec names."""
    return handler_class(spec.handler)(spec)
