"""Reading prediction bodies: the limit is enforced as bytes arrive, before any parsing, and
multipart bodies are split in memory."""

from __future__ import annotations

import asyncio

import pytest

from deployments.inference.request_body import ClientDisconnected, read_body, split_inputs
from handlers.errors import BadInputError, PayloadTooLargeError

BOUNDARY = "xyz"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def chunked(chunks: list[bytes], consumed: list[int]):  # type: ignore[no-untyped-def]
    """An ASGI receive() delivering ``chunks`` (no Content-Length), counting what it handed out."""
    queue = list(chunks)

    async def receive() -> dict:
        chunk = queue.pop(0)
        consumed.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    return receive


def part(name: str, data: bytes, content_type: str = "image/png", filename: str | None = "x.png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
    return head.encode() + data + b"\r\n"


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    consumed: list[int] = []
    body = [part("data", b"\0" * (1 << 20))[:65536]] + [b"\0" * 65536] * 127  # 8 MiB, no length
    with pytest.raises(PayloadTooLargeError, match="over the limit of 1048576"):
        asyncio.run(read_body(chunked(body, consumed), None, 1 << 20))
    assert sum(consumed) <= (1 << 20) + 65536  # stopped at the limit, not after all 8 MiB


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    consumed: list[int] = []
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read_body(chunked([b"x"], consumed), "5000000", 1000))
    assert consumed == []


def test_a_client_that_leaves_mid_body_is_not_answered() -> None:
    async def receive() -> dict:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnected):
        asyncio.run(read_body(receive, None, 1000))


def test_multipart_data_fields_in_order() -> None:
    body = (
        part("data", b"A")
        + part("other", b"zzz")
        + part("data", b"B", "image/jpeg")
        + f"--{BOUNDARY}--\r\n".encode()
    )
    inputs = split_inputs(body, MULTIPART)
    assert [(i.data, i.content_type) for i in inputs] == [(b"A", "image/png"), (b"B", "image/jpeg")]


def test_any_file_field_when_none_is_called_data() -> None:
    body = part("image", b"A") + f"--{BOUNDARY}--\r\n".encode()
    assert [i.data for i in split_inputs(body, MULTIPART)] == [b"A"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (part("data", b"A"), "closing boundary"),  # truncated
        (part("other", b"A", filename=None) + f"--{BOUNDARY}--\r\n".encode(), "no field named 'data'"),
        (b"".join(part("data", b"A") for _ in range(65)) + f"--{BOUNDARY}--\r\n".encode(), "more than 64"),
    ],
)
def test_bad_multipart_bodies_are_400(body: bytes, fragment: str) -> None:
    with pytest.raises(BadInputError, match=fragment):
        split_inputs(body, MULTIPART)


def test_a_raw_body_is_one_input() -> None:
    assert [(i.data, i.content_type) for i in split_inputs(b"raw", "image/jpeg")] == [(b"raw", "image/jpeg")]
