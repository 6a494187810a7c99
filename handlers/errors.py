"""The project's exception hierarchy.

Every error a handler or deployment raises on purpose derives from :class:`RaytorchError`
and carries the HTTP status it maps to and a stable ``type`` name, so the ingress turns
any of them into the JSON error shape ``{"code", "type", "message"}`` in one place.
They hold only plain attributes so they pickle across Ray handles unchanged.
"""

from __future__ import annotations


class RaytorchError(Exception):
    """Base class: an error with an HTTP status and a stable type name."""

    status: int = 500
    type_name: str = "InternalServerException"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        # Keyword-only arguments are lost by the default Exception pickling; rebuild explicitly.
        return (_rebuild, (type(self), self.message, self.retry_after_s))

    def to_dict(self) -> dict[str, object]:
        """The TorchServe-compatible JSON body for this error."""
        return {"code": self.status, "type": self.type_name, "message": self.message}


def _rebuild(cls: type[RaytorchError], message: str, retry_after_s: float | None) -> RaytorchError:
    return cls(message, retry_after_s=retry_after_s)


class BadInputError(RaytorchError):
    """The request body cannot be used by the model (not an image, empty, corrupt...)."""

    status = 400
    type_name = "BadRequestException"


class UnsupportedMediaTypeError(RaytorchError):
    """The declared content type is not one the handler accepts."""

    status = 415
    type_name = "UnsupportedMediaTypeException"


class PayloadTooLargeError(RaytorchError):
    """The body (or the decoded image) is over a configured limit."""

    status = 413
    type_name = "PayloadTooLargeException"


class ModelNotFoundError(RaytorchError):
    """No model (or version) of that name is registered."""

    status = 404
    type_name = "ModelNotFoundException"


class ModelNotReadyError(RaytorchError):
    """The model exists but has no replica able to serve right now."""

    status = 503
    type_name = "ServiceUnavailableException"


class RequestTimeoutError(RaytorchError):
    """The request did not finish within its deadline."""

    status = 504
    type_name = "RequestTimeoutException"


class ModelLoadError(RaytorchError):
    """The model could not be built or its weights could not be loaded."""

    status = 500
    type_name = "ModelLoadException"


class ConfigError(RaytorchError):
    """A model or handler specification is invalid."""

    status = 400
    type_name = "InvalidConfigException"


class InferenceError(RaytorchError):
    """The model failed while running a batch (not caused by one request's input)."""

    status = 500
    type_name = "InferenceException"
