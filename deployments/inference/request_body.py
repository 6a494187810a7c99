"""Read a prediction request's inputs: a raw body, or multipart ``data`` fields.

Bytes are counted as they arrive and the request is refused with 413 the moment it passes the
limit, before any parsing (chunked bodies included). Multipart bodies are then split in memory
by python-multipart's parser: nothing is spooled to disk. Works on a plain ASGI ``receive``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from handlers.errors import BadInputError, PayloadTooLargeError
from handlers.tensor_data import TensorRequest

MAX_INPUTS = 64  # inputs one request may carry: multipart parts, query values, instances, BYTES elements
Receive = Callable[[], Awaitable[dict]]


@dataclass(frozen=True)
class RequestInput:
    """One input of a prediction request: encoded bytes, or an Open Inference request's
    numeric tensors (for the ``tensor`` handler)."""

    data: bytes | TensorRequest
    content_type: str | None


class ClientDisconnected(Exception):
    """The client went away before its body was complete (nobody to answer)."""


def _too_large(size: int | str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body of {size} bytes is over the limit of {limit} bytes.")


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise _too_large(content_length, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit}", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def is_multipart(content_type: str | None) -> bool:
    """True for ``multipart/form-data`` bodies."""
    return (content_type or "").lower().startswith("multipart/form-data")


def split_inputs(body: bytes, content_type: str | None) -> list[RequestInput]:
    """Each multipart ``data`` field (or every file field when none is called so), or the raw
    body as one input."""
    if not is_multipart(content_type):
        return [RequestInput(body, content_type)]
    parts = _multipart_parts(body, content_type or "")
    named = [p for p in parts if p.name == "data"]
    chosen = named or [p for p in parts if p.filename is not None]
    if not chosen:
        raise BadInputError("Multipart body has no field named 'data' holding the input.")
    return [
        RequestInput(p.data, p.content_type or ("text/plain" if p.filename is None else None)) for p in chosen
    ]


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    data: bytes = b""


def _multipart_parts(body: bytes, content_type: str) -> list[_Part]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadInputError("Malformed multipart body: the content type names no boundary")
    parts: list[_Part] = []
    data: list[bytes] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    headers: dict[bytes, bytes] = {}
    complete: list[bool] = []

    def on_part_begin() -> None:
        if len(parts) >= MAX_INPUTS:
            raise BadInputError(f"Multipart body has more than {MAX_INPUTS} parts")
        parts.append(_Part())
        data.clear()
        headers.clear()

    def on_header_end() -> None:
        headers[header["field"].lower()] = header["value"]
        header["field"] = header["value"] = b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        part = parts[-1]
        part.name = disposition[b"name"].decode("latin-1") if b"name" in disposition else None
        if b"filename" in disposition:
            part.filename = disposition[b"filename"].decode("latin-1")
        if b"content-type" in headers:
            part.content_type = headers[b"content-type"].decode("latin-1")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": lambda b, start, end: data.append(b[start:end]),
        "on_part_end": lambda: setattr(parts[-1], "data", b"".join(data)),
        "on_header_field": lambda b, start, end: header.__setitem__("field", header["field"] + b[start:end]),
        "on_header_value": lambda b, start, end: header.__setitem__("value", header["value"] + b[start:end]),
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_end": lambda: complete.append(True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except BadInputError:
        raise
    except Exception as exc:  # python-multipart's own errors for bad bodies
        raise BadInputError(f"Malformed multipart body: {exc}") from None
    if not complete:
        raise BadInputError("Malformed multipart body: it ends before its closing boundary")
    return parts
