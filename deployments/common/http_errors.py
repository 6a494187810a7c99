"""The one place where exceptions become answers: HTTP statuses and bodies, and gRPC codes.

What a call through a Serve handle raises (overload, a lost replica, an unavailable deployment,
our own error raised in the replica) becomes one of our errors in :func:`call_error`; any other
exception is a bug, logged with its request id and answered by :func:`unexpected_error`.
Every protocol's code raises the project's own exceptions (handlers.errors); the HTTP entry
point, the FastAPI apps (inference extras, Open Inference v2 and management) and the gRPC
servicers all turn them into a status here, so the same fault gets the same status and wording
everywhere. Bodies are TorchServe's ``{"code", "type", "message"}``, or the Open Inference
Protocol's ``{"error": "..."}`` on its v2 routes. gRPC answers carry the code that the error's
HTTP status maps to in :data:`GRPC_CODES`, and the same message. Nothing looks at an error's
message text to classify it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from handlers.errors import (
    METHOD_NOT_ALLOWED,
    RESOURCE_NOT_FOUND,
    BadInputError,
    MethodNotAllowedError,
    ModelNotReadyError,
    RaytorchError,
    ResourceNotFoundError,
    validation_message,
)

logger = logging.getLogger("raytorch.http")
ErrorBody = Callable[[RaytorchError], dict]

# How long a client should wait before retrying (the Retry-After header), by what went wrong.
OVERLOAD_RETRY_AFTER_S = 1.0  # a full queue drains in about a batch
REPLICA_LOST_RETRY_AFTER_S = 2.0  # Serve starts a replacement replica
UNAVAILABLE_RETRY_AFTER_S = 5.0  # a deployment without a ready replica (starting, failed)

# gRPC status code names (grpc.StatusCode members) by HTTP status; anything else is INTERNAL.
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",  # what gRPC itself answers for a message over its size limit
    415: "INVALID_ARGUMENT",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_code_name(error: RaytorchError) -> str:
    """The gRPC status code (a ``grpc.StatusCode`` member name) for ``error``."""
    return GRPC_CODES.get(error.status, "INTERNAL")


def oip_error_body(error: RaytorchError) -> dict:
    """The Open Inference Protocol's error object: ``{"error": message}``."""
    return {"error": error.message}


def torchserve_error_body(error: RaytorchError) -> dict:
    """TorchServe's error object: ``{"code", "type", "message"}``."""
    return error.to_dict()


def as_raytorch_error(exc: BaseException, path: str = "") -> RaytorchError:
    """Any exception as one of ours (unexpected ones become a 500 that names no internals)."""
    if isinstance(exc, RaytorchError):
        return exc
    if isinstance(exc, RequestValidationError | ValidationError):
        return BadInputError(f"Invalid request: {validation_message(list(exc.errors()))}")
    if isinstance(exc, StarletteHTTPException):
        # TorchServe's exact sentences: clients compare them (its own tests do).
        if exc.status_code == 404:
            return ResourceNotFoundError(RESOURCE_NOT_FOUND)
        if exc.status_code == 405:
            return MethodNotAllowedError(METHOD_NOT_ALLOWED)
        error = RaytorchError(str(exc.detail))
        error.status, error.type_name = exc.status_code, "HttpException"
        return error
    return RaytorchError("Internal error")


def call_error(exc: BaseException, what: str) -> RaytorchError | None:
    """What ``exc``, raised by a Serve call to ``what`` (``'Model "m"'``, ``"The management
    API"``), means to the client; None when it is none of Ray's known faults (a bug)."""
    if isinstance(exc, BackPressureError):
        return ModelNotReadyError(
            f"{what} is overloaded: its queue is full. Retry later.", retry_after_s=OVERLOAD_RETRY_AFTER_S
        )
    if isinstance(exc, RayActorError):
        # The replica died with this request in it (crash, OOM kill); Serve is replacing it.
        return ModelNotReadyError(
            f"{what} lost the replica serving this request; a new one is starting. Retry.",
            retry_after_s=REPLICA_LOST_RETRY_AFTER_S,
        )
    if isinstance(exc, DeploymentUnavailableError | RayServeException):
        return ModelNotReadyError(f"{what} is unavailable: {exc}", retry_after_s=UNAVAILABLE_RETRY_AFTER_S)
    # Errors raised in the replica arrive wrapped in a RayTaskError; ours are inside.
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, RaytorchError) else None


def replica_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the replica, or every replica, of a call is gone (the routing table
    is then stale)."""
    overloaded = isinstance(exc, BackPressureError)  # a RayServeException, but every replica is there
    return not overloaded and isinstance(exc, RayActorError | RayServeException)


def unexpected_error(exc: BaseException, where: str, request_id: str) -> RaytorchError:
    """Any exception as the error a client sees. A bug (not one of ours, nor a framework's
    client error) is logged with the request id, and answered by :func:`internal_error`."""
    error = as_raytorch_error(exc, where)
    if type(error) is RaytorchError and not isinstance(exc, RaytorchError | StarletteHTTPException):
        logger.error("Unexpected error in %s (request id %s)", where, request_id, exc_info=exc)
        return internal_error(request_id)
    return error


def error_json(error: RaytorchError) -> bytes:
    """The JSON body of an error answer."""
    return json.dumps(error.to_dict()).encode()


def internal_error(request_id: str) -> RaytorchError:
    """What a client sees of a bug: a 500 naming the request id to look up in the log."""
    return RaytorchError(f"Internal error; see the server log for request id {request_id}.")


def install_error_handlers(app: FastAPI, body: ErrorBody = torchserve_error_body) -> None:
    """Map every exception a FastAPI app raises through :func:`as_raytorch_error`, answering
    with ``body(error)`` (TorchServe's error object by default)."""

    async def answer(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.headers.get("x-request-id", "-")
        error = unexpected_error(exc, f"{request.method} {request.url.path}", request_id)
        return JSONResponse(body(error), error.status, headers=error.headers())

    for kind in (RaytorchError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, answer)
