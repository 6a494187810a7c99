"""Property-based fuzzing of request parsing and decoding: garbage in, a 4xx JSON out, never a 500.

The app runs in-process with a real tiny handler behind it (tests/fixtures/inference.py's
LocalRouter), so the fuzzed bytes go through the same body reading, multipart parsing, JSON
parsing and image decoding as on a server.
"""

from __future__ import annotations

import base64
import io
import json
import string

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from deployments.common.settings import IngressArgs
from handlers.errors import BadInputError, PayloadTooLargeError
from handlers.handler_catalog import create_handler
from handlers.image_io import decode_image
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import tiny_spec

LIMIT = 200_000
ALLOWED = {200, 400, 413, 415}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client() -> TestClient:
    handler = create_handler(tiny_spec())
    handler.load()
    return TestClient(inference_app(LocalRouter({"tiny": handler}), IngressArgs(max_body_bytes=LIMIT)))


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = small_png()


def assert_clean(response) -> None:  # type: ignore[no-untyped-def]
    """What a client must always see: an expected status, and JSON errors without tracebacks."""
    assert response.status_code in ALLOWED, response.text
    assert "Traceback (most recent call last)" not in response.text
    if response.status_code != 200:
        body = response.json()
        if response.request.url.path.startswith("/v2"):  # the Open Inference Protocol's shape
            assert set(body) == {"error"} and body["error"]
        else:
            assert body["code"] == response.status_code and body["message"]


boundaries = st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=70)


@FUZZ
@given(boundary=boundaries, body=st.binary(max_size=2000))
def test_random_multipart_bodies(client: TestClient, boundary: str, body: bytes) -> None:
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    assert_clean(client.post("/predictions/tiny", content=body, headers=headers))


part_headers = st.sampled_from(
    [
        'Content-Disposition: form-data; name="data"; filename="a.png"\r\nContent-Type: image/png',
        'Content-Disposition: form-data; name="data"',
        'Content-Disposition: form-data; name="other"; filename="b"',
        "Content-Disposition: attachment",
        'Content-Disposition: form-data; name="data"\r\nContent-Type: application/json',
        "",
    ]
)
part_bodies = st.one_of(
    st.just(PNG), st.binary(max_size=300), st.builds(lambda n: PNG[:n], st.integers(0, len(PNG)))
)


@FUZZ
@given(parts=st.lists(st.tuples(part_headers, part_bodies), max_size=4), closed=st.booleans())
def test_structured_multipart_bodies(
    client: TestClient, parts: list[tuple[str, bytes]], closed: bool
) -> None:
    body = b"".join(b"--B\r\n" + h.encode() + b"\r\n\r\n" + data + b"\r\n" for h, data in parts)
    body += b"--B--\r\n" if closed else b""
    response = client.post(
        "/predictions/tiny", content=body, headers={"content-type": "multipart/form-data; boundary=B"}
    )
    assert_clean(response)


@FUZZ
@given(
    body=st.binary(max_size=3000),
    content_type=st.sampled_from([None, "image/png", "application/octet-stream", "text/plain", "image/*"]),
)
def test_random_raw_bodies(client: TestClient, body: bytes, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert_clean(client.post("/predictions/tiny", content=body, headers=headers))


@settings(max_examples=300, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_images_decode_or_fail_as_bad_input(flips: list[tuple[int, int]]) -> None:
    data = bytearray(PNG)
    for position, value in flips:
        data[position] = value
    try:
        image = decode_image(bytes(data), max_pixels=10_000)
    except (BadInputError, PayloadTooLargeError):
        return
    # What decodes is usable as it is: within the pixel limit, and it converts to the model's
    # 3-channel input without a late error (which would be a 500 instead of this 400).
    assert image.width * image.height <= 10_000
    assert pil_to_tensor(image).shape == (3, image.height, image.width)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
instances = st.one_of(
    json_values,
    st.fixed_dictionaries({"b64": st.sampled_from([base64.b64encode(PNG).decode(), "aGk=", "!!", ""])}),
    st.fixed_dictionaries({"data": json_values}),
)


@FUZZ
@given(document=st.one_of(json_values, st.fixed_dictionaries({"instances": st.lists(instances, max_size=3)})))
def test_random_v1_documents(client: TestClient, document: object) -> None:
    assert_clean(client.post("/v1/models/tiny:predict", content=json.dumps(document).encode()))


tensors = st.fixed_dictionaries(
    {
        "datatype": st.sampled_from(["BYTES", "FP32", None]),
        "data": st.one_of(json_values, st.lists(st.sampled_from(["aGk=", "%"]))),
    },
    optional={"name": st.text(max_size=5), "shape": json_values},
)


@FUZZ
@given(
    document=st.one_of(
        json_values, st.fixed_dictionaries({"inputs": st.one_of(json_values, st.lists(tensors, max_size=3))})
    )
)
def test_random_v2_documents(client: TestClient, document: object) -> None:
    assert_clean(client.post("/v2/models/tiny/infer", content=json.dumps(document).encode()))


@FUZZ
@given(name=st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and s not in (".", "..")))
def test_random_model_names(client: TestClient, name: str) -> None:
    from urllib.parse import quote

    response = client.post(f"/predictions/{quote(name, safe='')}", content=PNG)
    assert response.status_code in {200, 400, 404}, response.text
    assert "Traceback (most recent call last)" not in response.text
    assert len(response.json()["message"] if response.status_code != 200 else "") < 400
