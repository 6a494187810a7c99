"""TorchServe's request parameters: how one is decoded for a handler, and named parameters as a
multipart form (how a workflow hands a TorchServe handler the outputs of several parent nodes,
``{"parent_a": ..., "parent_b": ...}``, as TorchServe's frontend hands it a multipart request's
fields). No Ray, no torch.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from handlers.errors import BadInputError

MAX_FIELDS = 64


def request_value(data: bytes, content_type: str | None) -> Any:
    """One parameter as TorchServe's worker decodes it: JSON decoded, text as str, anything
    else a bytearray (an undecodable JSON or text body stays bytes, as TorchServe forwards it)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    value: Any = bytearray(data)
    try:
        if media == "application/json":
            value = json.loads(data)
        elif media.startswith("text"):
            value = data.decode("utf-8")
    except ValueError:
        pass
    except RecursionError:  # TorchServe's worker would fail the whole batch on it
        raise BadInputError("Invalid JSON body: nested too deeply") from None
    return value


def encode_form(fields: dict[str, tuple[bytes, str | None]]) -> tuple[bytes, str]:
    """``name -> (bytes, content type)`` as a ``multipart/form-data`` body and its content type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (data, content_type) in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        parts.append(head.encode("latin-1") + b"\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode("latin-1")
    return body, f"multipart/form-data; boundary={boundary}"


def decode_form(body: bytes, content_type: str) -> dict[str, tuple[bytes, str | None]] | None:
    """The fields of a ``multipart/form-data`` body by name; None when it is not a complete one."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return None
    fields: dict[str, tuple[bytes, str | None]] = {}
    current: dict[str, object] = {}
    chunks: list[bytes] = []
    header = {"field": b"", "value": b""}
    complete: list[bool] = []

    def header_end() -> None:
        current[header["field"].decode("latin-1").lower()] = header["value"].decode("latin-1")
        header["field"] = header["value"] = b""

    def part_end() -> None:
        _, disposition = parse_options_header(str(current.get("content-disposition", "")))
        name = disposition.get(b"name", b"").decode("latin-1")
        if len(fields) < MAX_FIELDS:
            fields[name] = (b"".join(chunks), current.get("content-type"))  # type: ignore[assignment]

    callbacks = {
        "on_part_begin": lambda: (current.clear(), chunks.clear()),
        "on_part_data": lambda b, start, end: chunks.append(b[start:end]),
        "on_part_end": part_end,
        "on_header_field": lambda b, start, end: header.__setitem__("field", header["field"] + b[start:end]),
        "on_header_value": lambda b, start, end: header.__setitem__("value", header["value"] + b[start:end]),
        "on_header_end": header_end,
        "on_end": lambda: complete.append(True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Exception:  # python-multipart's own errors: not a form after all
        return None
    return fields if complete else None
