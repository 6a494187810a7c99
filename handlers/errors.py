"""The project's exception hierarchy.

Every error a handler or deployment raises on purpose derives from :class:`RaytorchError`
and carries the HTTP status it maps to and a stable ``type`` name, so the ingress turns
any of them into the JSON error shape ``{"code", "type", "message"}`` in one place.
They hold only plain attributes so they pickle across Ray handles unchanged.
"""

from __future__ import annotations


class RaytorchError(Exception):
    """Base class: an error with an HTTP status and a stable type name.

    ``retry_after_s`` becomes a ``Retry-After`` header (overload, models still loading).
    """

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

    def headers(self) -> dict[str, str]:
        """HTTP headers this error asks for (``Retry-After``)."""
        if not self.retry_after_s:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


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


class ModelVersionNotFoundError(ModelNotFoundError):
    """The model exists but not that version (TorchServe's wording, which scripts grep)."""

    type_name = "ModelVersionNotFoundException"

    @classmethod
    def of(cls, model: str, version: str | None) -> ModelVersionNotFoundError:
        """``Model version: 1.3.1 does not exist for model: noop``."""
        return cls(f"Model version: {version} does not exist for model: {model}")


class ModelNotReadyError(RaytorchError):
    """The model exists but has no replica able to serve right now."""

    status = 503
    type_name = "ServiceUnavailableException"


class RequestTimeoutError(RaytorchError):
    """The request did not finish within its deadline."""

    status = 504
    type_name = "RequestTimeoutException"


class BodyTimeoutError(RaytorchError):
    """The client did not send its request body within the ingress's body deadline."""

    status = 408
    type_name = "RequestBodyTimeoutException"


class ServerBusyError(RaytorchError):
    """The ingress already handles as many requests as it may (its ``max_ongoing_requests``)."""

    status = 503
    type_name = "ServiceUnavailableException"


class ModelLoadError(RaytorchError):
    """The model could not be built or its weights could not be loaded."""

    status = 500
    type_name = "ModelLoadException"


class DependencyInstallError(RaytorchError):
    """pip could not install a registered archive's requirements (install_py_dep_per_model):
    the message names the requirements and quotes pip's error."""

    status = 400
    type_name = "DependencyInstallException"


class ConfigError(RaytorchError):
    """A model or handler specification is invalid."""

    status = 400
    type_name = "InvalidConfigException"


class InferenceError(RaytorchError):
    """The model failed while running a batch (not caused by one request's input)."""

    status = 500
    type_name = "InferenceException"


class UnauthorizedError(RaytorchError):
    """Missing or wrong bearer token."""

    status = 401
    type_name = "UnauthorizedException"


class ConflictError(RaytorchError):
    """The model version is already registered."""

    status = 409
    type_name = "ConflictStatusException"


class DefaultVersionError(RaytorchError):
    """Unregistering a model's default version while it has other versions (TorchServe: 403)."""

    status = 403
    type_name = "InvalidModelVersionException"


class InsufficientResourcesError(RaytorchError):
    """The cluster cannot start the requested replicas now."""

    status = 503
    type_name = "InsufficientResourcesException"


class DownloadArchiveError(BadInputError):
    """A remote archive could not be fetched."""

    type_name = "DownloadArchiveException"


class ResourceNotFoundError(RaytorchError):
    """No route matches the request's path (TorchServe's wording)."""

    status = 404
    type_name = "ResourceNotFoundException"


class MethodNotAllowedError(RaytorchError):
    """The path exists but not for this HTTP method."""

    status = 405
    type_name = "MethodNotAllowedException"


class NotImplementedFeatureError(RaytorchError):
    """A documented API this server does not offer yet (KServe v1 explanations)."""

    status = 501
    type_name = "NotImplementedException"


class HandlerStatusError(RaytorchError):
    """A handler's own error with the status it chose (TorchServe's ``PredictionException``).

    Unlike the other classes its status is per instance, so it pickles the status too.
    """

    type_name = "PredictionException"

    def __init__(self, message: str, status: int = 500, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        # A status outside 4xx/5xx would not be an error answer: treat it as a server error.
        self.status = status if 400 <= status <= 599 else 500

    def __reduce__(self):
        return (_rebuild_with_status, (self.message, self.status, self.retry_after_s))


def _rebuild_with_status(message: str, status: int, retry_after_s: float | None) -> HandlerStatusError:
    return HandlerStatusError(message, status, retry_after_s=retry_after_s)


class StreamCancelled(Exception):
    """Raised into a handler that is streaming when its client has gone: the handler stops
    producing parts (it is not an answer: nobody is left to receive one)."""


class WorkflowNotFoundError(RaytorchError):
    """No workflow of that name is registered (TorchServe's ``Workflow not found: name``)."""

    status = 404
    type_name = "WorkflowNotFoundException"


class WorkflowNodeError(RaytorchError):
    """A workflow failed at one node: that node's status, its error type and its name.

    TorchServe answers every node failure with a 500 naming only the node; this keeps the
    node's own status (a bad input stays a 400, a timeout a 504) and says which node it was.
    """

    def __init__(
        self,
        message: str,
        status: int = 500,
        node: str = "",
        error_type: str = "InternalServerException",
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status if 400 <= status <= 599 else 500
        self.node = node
        self.type_name = error_type

    def __reduce__(self):
        return (
            _rebuild_node_error,
            (self.message, self.status, self.node, self.type_name, self.retry_after_s),
        )

    def to_dict(self) -> dict[str, object]:
        """TorchServe's error object plus the failed ``node``."""
        return {**super().to_dict(), "node": self.node}


def _rebuild_node_error(
    message: str, status: int, node: str, error_type: str, retry_after_s: float | None
) -> WorkflowNodeError:
    return WorkflowNodeError(message, status, node, error_type, retry_after_s=retry_after_s)


# TorchServe's wording of its routing errors: scripts compare these strings.
RESOURCE_NOT_FOUND = "Requested resource is not found, please refer to API document."
METHOD_NOT_ALLOWED = "Requested method is not allowed, please refer to API document."


def validation_message(errors: list) -> str:
    """``field.path: problem; ...`` for pydantic's ``ValidationError.errors()``: how every
    400 about a setting or a parameter words it."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
