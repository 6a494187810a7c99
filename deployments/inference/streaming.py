"""Streamed predictions: each partial answer to the client as the model produces it.

A client asks for a stream on ``/predictions/{model}[/{version}]`` with
``Accept: text/event-stream`` (Server-Sent Events: one ``data:`` event per part) or with the
query parameter ``?stream=true`` (HTTP chunked transfer: a text or bytes part as it is, as
TorchServe sends ``send_intermediate_predict_response`` values; any other part as one line of
JSON). The parts come from the model replica through a Serve streaming call
(:meth:`deployments.inference.data_plane.DataPlane.stream`).

- An error before the first part is an ordinary error answer (status and JSON body).
- An error after it ends the stream with an error part the client can read:
  ``event: error`` + ``data: {"code", "type", "message"}`` (SSE), or that JSON as the last line.
- A client that disconnects cancels the call, which stops the handler at its next part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

from deployments.common.messages import Rejected
from deployments.inference.data_plane import DataPlane
from deployments.inference.request_body import ClientDisconnected, RequestInput
from deployments.inference.telemetry import RequestRecord
from handlers.errors import BadInputError, RaytorchError

logger = logging.getLogger("raytorch.ingress")
SSE = "sse"
CHUNKED = "chunked"
EVENT_STREAM = "text/event-stream"
TRUE = ("true", "1", "yes")


def stream_mode(headers: dict[str, str], query_string: bytes) -> str | None:
    """``"sse"``, ``"chunked"`` or None (a whole answer) for a prediction request."""
    if EVENT_STREAM in headers.get("accept", "").lower():
        return SSE
    for key, value in parse_qsl(query_string.decode("latin-1")):
        if key == "stream":
            if value.lower() in TRUE:
                return CHUNKED
            if value.lower() not in ("false", "0", "no", ""):
                raise BadInputError(f"Query parameter stream must be true or false, not {value[:40]!r}")
    return None


def encode_part(part: Any, mode: str) -> bytes:
    """One part as the client receives it."""
    if mode == SSE:
        text = part.decode("utf-8", "replace") if isinstance(part, bytes) else part
        text = text if isinstance(text, str) else json.dumps(text)
        return "".join(f"data: {line}\n" for line in text.split("\n")).encode() + b"\n"
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode("utf-8")
    return json.dumps(part).encode() + b"\n"


def encode_error(error: RaytorchError, mode: str) -> bytes:
    """The part that ends a failed stream: the error's status, type and message."""
    body = json.dumps(error.to_dict())
    return f"event: error\ndata: {body}\n\n".encode() if mode == SSE else body.encode() + b"\n"


def content_type_of(first: Any, mode: str) -> str:
    """The response's media type, from the mode and the first part."""
    if mode == SSE:
        return EVENT_STREAM
    if isinstance(first, str):
        return "text/plain; charset=utf-8"
    if isinstance(first, bytes):
        return "application/octet-stream"
    return "application/x-ndjson"


class PredictionStreams:
    """Answers streamed predictions over ASGI (see the module docstring)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def respond(
        self,
        send: Any,
        receive: Any,
        record: RequestRecord,
        model: str,
        version: str | None,
        inputs: list[RequestInput],
        mode: str,
    ) -> None:
        """Stream the model's parts for the request's one input to the client."""
        if len(inputs) != 1:
            raise BadInputError(f"A streamed prediction takes one input, this request has {len(inputs)}")
        state, parts = await self.plane.stream(record, model, version, inputs[0])
        watcher = asyncio.ensure_future(_disconnect(receive))
        try:
            first = await _next(parts, watcher)
            if isinstance(first, Rejected):
                raise first.error
            headers = [
                (b"content-type", content_type_of(first, mode).encode()),
                (b"cache-control", b"no-cache"),
                (b"x-model-version", state.version.encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            part: Any = first
            while part is not _END:
                if isinstance(part, Rejected):
                    logger.warning("Stream of model %s failed midway: %s", model, part.error.message)
                    failed = encode_error(part.error, mode)
                    await send({"type": "http.response.body", "body": failed, "more_body": True})
                    break
                await send({"type": "http.response.body", "body": encode_part(part, mode), "more_body": True})
                part = await _next(parts, watcher)
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await parts.aclose()  # type: ignore[attr-defined]


_END = object()


async def _next(parts: AsyncIterator[Any], watcher: asyncio.Future[None]) -> Any:
    """The next part, ``_END`` after the last; ClientDisconnected as soon as the client is gone."""
    following = asyncio.ensure_future(parts.__anext__())
    await asyncio.wait({following, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if not following.done():
        following.cancel()
        with contextlib.suppress(BaseException):
            await following
        raise ClientDisconnected()
    try:
        return following.result()
    except StopAsyncIteration:
        return _END
    except RaytorchError as exc:
        return Rejected(exc)


async def _disconnect(receive: Any) -> None:
    """Returns when the client has closed the connection (the body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
