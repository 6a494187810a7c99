"""The HTTP entry point: a plain ASGI app in front of everything the ingress serves.

Predictions (``/predictions/{model}[/{version}]``, POST or PUT, raw body or multipart) are
served right here without a web framework: they are the hot path, and every microsecond of
CPU spent here is taken from the models on the same machine. TorchServe's other two forms sit
beside them: GET with the input in the query (``?data=...``), and OPTIONS for the model's
OpenAPI description (answered by the routes app). ``/models`` is forwarded to the
management deployment (when this process is the server's only HTTP listener). Everything
else (health, metrics, OpenAPI, KServe v1/v2) goes to the FastAPI app of
:mod:`deployments.inference.routes`. Every request gets a request id, an access-log line and,
for predictions, metrics: one :meth:`Telemetry.finish` per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from deployments.common.forwarding import ForwardedRequest, ForwardedResponse
from deployments.common.http_errors import error_json, unexpected_error
from deployments.inference.data_plane import DataPlane
from deployments.inference.off_loop import parse_off_loop
from deployments.inference.request_body import (
    MAX_INPUTS,
    ClientDisconnected,
    RequestInput,
    is_multipart,
    read_body,
    split_inputs,
)
from deployments.inference.streaming import PredictionStreams, stream_mode
from deployments.inference.telemetry import (
    RECORD_KEY,
    REQUEST_ID_HEADER,
    RequestRecord,
    Telemetry,
    request_id_from,
)
from handlers.errors import METHOD_NOT_ALLOWED, BadInputError, MethodNotAllowedError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN

if TYPE_CHECKING:
    from deployments.inference.workflow_calls import WorkflowCalls

Asgi = Callable[[dict, Any, Any], Awaitable[None]]
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
JSON_HEADERS = [(b"content-type", b"application/json")]
PREDICTION_METHODS = ("POST", "PUT", "GET", "OPTIONS")
TEXT_INPUT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"
QUERY_INPUT_HELP = (
    "GET /predictions needs the input as query parameter 'data' (?data=...); "
    "send files and images with POST or PUT"
)


def prediction_target(path: str) -> tuple[str, str | None]:
    """``/predictions/{model}[/{version}]`` -> (model, version), refusing impossible names (400)."""
    parts = path[len("/predictions/") :].split("/")
    if len(parts) > 2 or not parts[0]:
        raise BadInputError("Use /predictions/{model_name} or /predictions/{model_name}/{model_version}")
    model, version = parts[0], (parts[1] if len(parts) == 2 and parts[1] else None)
    if not _NAME.fullmatch(model):
        raise BadInputError(
            f"Invalid model name {model[:80]!r}: names are 1-128 ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit."
        )
    if version is not None and not _VERSION.fullmatch(version):
        raise BadInputError(
            f"Invalid model version {version[:80]!r}: versions are 1-64 ASCII letters, digits, "
            "'_', '.' or '-'."
        )
    return model, version


class HttpEntry:
    """The ASGI app of the ingress (see the module docstring).

    ``authorize(header)`` raises UnauthorizedError when inference needs a token and the
    ``Authorization`` header lacks it; ``management(request)`` answers ``/models`` requests
    when this process must forward them (None behind Serve's own proxy, which routes /models
    itself), after ``check_management_token(header)`` has accepted the caller's token;
    ``echo_request_id`` is False behind Serve's proxy, which adds the header.
    """

    def __init__(
        self,
        plane: DataPlane,
        telemetry: Telemetry,
        extras: Asgi,
        authorize: Callable[[str | None], Awaitable[None]],
        max_body_bytes: int,
        management: Callable[[ForwardedRequest], Awaitable[ForwardedResponse]] | None = None,
        echo_request_id: bool = True,
        check_management_token: Callable[[str | None], Awaitable[None]] | None = None,
        workflows: WorkflowCalls | None = None,
    ) -> None:
        self.plane = plane
        self.telemetry = telemetry
        self.extras = extras
        self.authorize = authorize
        self.max_body_bytes = max_body_bytes
        self.management = management
        self.echo_request_id = echo_request_id
        self.streams = PredictionStreams(plane)
        self.check_management_token = check_management_token
        self.workflows = workflows

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.extras(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        record = RequestRecord(
            request_id_from(headers.get(REQUEST_ID_HEADER)),
            scope["method"],
            scope["path"],
            (scope.get("client") or ("-",))[0],
            "http",  # the routes that predict name their protocol
        )
        status, started = 500, False
        extra_headers = (
            [(REQUEST_ID_HEADER.encode(), record.request_id.encode())] if self.echo_request_id else []
        )

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            await send(message)

        try:
            path = scope["path"]
            if path.startswith("/predictions/"):
                await self._predictions(scope, receive, send_with_id, headers, record)
            elif self.workflows is not None and path.startswith("/wfpredict/"):
                await self._wfpredict(scope, receive, send_with_id, headers, record)
            elif self.management is not None and path.split("/", 2)[1] in ("models", "workflows"):
                await self._forward(scope, receive, send_with_id, headers)
            else:
                scope[RECORD_KEY] = record
                if len(path) > 1 and path.endswith("/"):  # TorchServe ignores it; Starlette redirects
                    scope["path"] = path.rstrip("/") or "/"
                await self.extras(scope, receive, send_with_id)
        except ClientDisconnected:
            status = 499  # nginx's code for "client closed the request"; nothing to send
        except Exception as exc:
            error = unexpected_error(exc, f"{scope['method']} {path}", record.request_id)
            if not started:  # else the client already has a status; the connection just ends
                await _send_json(send_with_id, error.status, error_json(error), error.headers())
        finally:
            self.telemetry.finish(record, status)

    async def _predictions(
        self, scope: dict, receive: Any, send: Any, headers: dict, record: RequestRecord
    ) -> None:
        method = scope["method"]
        if method not in PREDICTION_METHODS:
            raise MethodNotAllowedError(METHOD_NOT_ALLOWED)
        record.protocol = "torchserve"
        model, version = prediction_target(scope["path"])
        await self.authorize(headers.get("authorization"))
        if method == "OPTIONS":  # TorchServe: the model's own OpenAPI description
            await self.extras(scope, receive, send)
            return
        if method == "GET":  # TorchServe: the input comes as query parameters
            inputs = query_inputs(scope.get("query_string", b""))
            if not inputs:
                await self.plane.resolve(model, version)  # an unknown model is still a 404
                raise BadInputError(QUERY_INPUT_HELP)
        else:
            content_type = headers.get("content-type")
            body = await read_body(receive, headers.get("content-length"), self.max_body_bytes)
            size = len(body) if is_multipart(content_type) else 0  # a raw body is not parsed
            inputs = await parse_off_loop(size, split_inputs, body, content_type)
        mode = stream_mode(headers, scope.get("query_string", b""))
        if mode is not None:  # partial answers as they come (deployments/inference/streaming.py)
            await self.streams.respond(send, receive, record, model, version, inputs, mode)
            return
        answers = await self.plane.infer(record, model, version, inputs)
        # Several multipart 'data' fields are answered as a list, one result per field.
        content = answers[0].result if len(answers) == 1 else [a.result for a in answers]
        extra = {
            "x-batch-size": ",".join(str(a.batch_size) for a in answers),
            "x-model-version": answers[0].version,
        }
        if isinstance(content, str | bytes):  # TorchServe sends a handler's text or bytes as they are
            await _send_raw(send, content, extra)
        else:
            await _send_json(send, 200, json.dumps(content).encode(), extra)

    async def _wfpredict(
        self, scope: dict, receive: Any, send: Any, headers: dict, record: RequestRecord
    ) -> None:
        # TorchServe's workflow predictions: POST (or PUT) with the input as the body.
        if scope["method"] not in ("POST", "PUT"):
            raise MethodNotAllowedError(METHOD_NOT_ALLOWED)
        record.protocol = "workflow"
        name = scope["path"][len("/wfpredict/") :].rstrip("/")
        if not _NAME.fullmatch(name):
            raise BadInputError(f"Invalid workflow name {name[:80]!r}: use /wfpredict/{{workflow_name}}")
        await self.authorize(headers.get("authorization"))
        body = await read_body(receive, headers.get("content-length"), self.max_body_bytes)
        answer = await self.workflows.predict(record, name, body, headers.get("content-type"))  # type: ignore[union-attr]
        raw = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": answer.body})

    async def _forward(self, scope: dict, receive: Any, send: Any, headers: dict) -> None:
        # Every /models route needs the token: a client without it is refused before its body
        # is read, so it can neither hold the ingress's memory nor reach the management replica.
        if self.check_management_token is not None:
            await self.check_management_token(headers.get("authorization"))
        # Management calls are rare and small: buffer them, then one handle call.
        body = await read_body(receive, headers.get("content-length"), self.max_body_bytes)
        request = ForwardedRequest(
            scope["method"],
            scope["path"],
            scope.get("query_string", b""),
            scope["headers"],
            body,
            scope.get("client"),
        )
        response = await self.management(request)
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": response.body})


def query_inputs(query_string: bytes) -> list[RequestInput]:
    """A GET prediction's inputs: each ``data`` (or ``body``) query value, as UTF-8 text."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    values = [value for key, value in pairs if key in ("data", "body")]
    if len(values) > MAX_INPUTS:
        raise BadInputError(f"A request carries at most {MAX_INPUTS} inputs, this one {len(values)}")
    return [RequestInput(value.encode("utf-8"), TEXT_INPUT) for value in values]


async def _send_raw(send: Any, content: str | bytes, headers: dict[str, str]) -> None:
    body, kind = (content.encode("utf-8"), TEXT_INPUT) if isinstance(content, str) else (content, OCTETS)
    raw = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
