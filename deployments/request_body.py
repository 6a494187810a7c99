"""Read a prediction request: the model name it targets, a raw body or multipart ``data`` fields."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import Request

from handlers.errors import BadInputError, PayloadTooLargeError
from handlers.spec import NAME_PATTERN, VERSION_PATTERN


@dataclass(frozen=True)
class RequestInput:
    """One input of a prediction request."""

    data: bytes
    content_type: str | None


def check_names(model: str, version: str | None = None) -> None:
    """Refuse model names and versions no model can have (traversal, unicode, huge) with 400.

    Checked before any lookup, so such a name never reaches routing, logs or file paths whole.
    """
    if not re.fullmatch(NAME_PATTERN, model):
        raise BadInputError(
            f"Invalid model name {model[:80]!r}{'...' if len(model) > 80 else ''}: names are 1-128 "
            "ASCII letters, digits, '_', '.' or '-', starting with a letter or digit."
        )
    if version is not None and not re.fullmatch(VERSION_PATTERN, version):
        raise BadInputError(
            f"Invalid model version {version[:80]!r}{'...' if len(version) > 80 else ''}: versions are "
            "1-64 ASCII letters, digits, '_', '.' or '-'."
        )


def _too_large(size: int | str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body of {size} bytes is over the limit of {limit} bytes.")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(declared, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit}", limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_inputs(request: Request, limit: int) -> list[RequestInput]:
    """Inputs of a request: each multipart ``data`` field, or the raw body as one input."""
    content_type = request.headers.get("content-type")
    if not (content_type or "").lower().startswith("multipart/form-data"):
        return [RequestInput(await read_body(request, limit), content_type)]
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(declared, limit)
    try:
        form = await request.form(max_files=64, max_fields=64)
    except Exception as exc:  # starlette raises its own HTTP/multipart errors for bad bodies
        raise BadInputError(f"Malformed multipart body: {getattr(exc, 'detail', exc)}") from None
    fields = form.getlist("data") or [v for v in form.values() if hasattr(v, "read")]
    if not fields:
        raise BadInputError("Multipart body has no field named 'data' holding the input.")
    inputs = []
    total = 0
    for field in fields:
        if isinstance(field, str):
            inputs.append(RequestInput(field.encode(), "text/plain"))
            continue
        data = await field.read()
        total += len(data)
        if total > limit:
            raise _too_large(total, limit)
        inputs.append(RequestInput(data, field.content_type))
    return inputs
