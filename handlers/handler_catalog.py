"""The catalog of handlers: find a handler class by default-handler name, import path, or
Python file path.

Importing this module does not import torch (handlers are imported when resolved), so
processes that only validate registrations, like the management app, stay small and start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handlers.errors import ConfigError, ModelLoadError
from handlers.torchserve.names import TORCHSERVE_PREFIX

if TYPE_CHECKING:
    from handlers.base import BaseHandler
    from handlers.spec import ModelSpec

DEFAULT_HANDLERS = {
    "image_classifier": "handlers.image_classifier:ImageClassifier",
    "object_detector": "handlers.object_detector:ObjectDetector",
    "image_segmenter": "handlers.image_segmenter:ImageSegmenter",
    "text_classifier": "handlers.text_classifier:TextClassifier",
    "audio_classifier": "handlers.audio_classifier:AudioClassifier",
    "voice_activity": "handlers.voice_activity:VoiceActivity",
    "tensor": "handlers.tensor:TensorHandler",
}


def handler_class(name: str, base_dir: str | None = None) -> type[BaseHandler]:
    """Resolve a handler name to a class.

    ``name`` is a default handler ('image_classifier'), an import path ('pkg.module:MyHandler'),
    a file ('my_handler.py:MyHandler', relative to ``base_dir`` inside an archive), or a
    TorchServe handler file ('torchserve:handler.py', run by handlers.torchserve.adapter).
    """
    if name.startswith(TORCHSERVE_PREFIX):  # a TorchServe handler file, run by the adapter
        import_path = "handlers.torchserve.adapter:TorchServeHandler"
    else:
        import_path = DEFAULT_HANDLERS.get(name, name)
    if ":" not in import_path:
        known = ", ".join(sorted(DEFAULT_HANDLERS))
        raise ConfigError(
            f"Unknown handler {name!r}: use one of {known}, 'package.module:Class' or 'file.py:Class'"
        )
    from handlers.base import BaseHandler
    from handlers.loading import import_object

    try:
        cls = import_object(import_path, base_dir)
    except ModelLoadError as exc:  # also wraps whatever the user's module raised on import
        raise ConfigError(f"Handler {name!r} cannot be imported: {exc.message}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseHandler)):
        raise ConfigError(f"Handler {name!r} is not a subclass of handlers.base.BaseHandler")
    return cls


def create_handler(spec: ModelSpec) -> BaseHandler:
    """Instantiate (but do not load) the handler a spec names."""
    return handler_class(spec.handler, spec.base_dir)(spec)
