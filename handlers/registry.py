"""Find a handler class by default-handler name or import path."""

from __future__ import annotations

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


def handler_class(name: str) -> type[BaseHandler]:
    """Resolve ``name`` (e.g. 'image_classifier' or 'pkg.module:MyHandler') to a class."""
    import_path = DEFAULT_HANDLERS.get(name, name)
    if ":" not in import_path:
        known = ", ".join(sorted(DEFAULT_HANDLERS))
        raise ConfigError(f"Unknown handler {name!r}: use one of {known} or 'package.module:Class'")
    try:
        cls = import_object(import_path)
    except ModelLoadError as exc:
        raise ConfigError(f"Handler {name!r} cannot be imported: {exc.message}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseHandler)):
        raise ConfigError(f"Handler {name!r} is not a subclass of handlers.base.BaseHandler")
    return cls


def create_handler(spec: ModelSpec) -> BaseHandler:
    """Instantiate (but do not load) the handler a spec names."""
    return handler_class(spec.handler)(spec)
