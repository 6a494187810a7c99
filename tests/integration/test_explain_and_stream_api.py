"""``/explanations`` and streamed ``/predictions`` (SSE and chunked) in-process, with real
handlers behind the fake router: what a client sees of each, errors included."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deployments.common.settings import IngressArgs
from handlers.base import BaseHandler
from handlers.errors import InferenceError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import echo_spec, tiny_spec
from tests.integration.test_http_api import assert_error
from tests.unit.test_streaming import STREAMING_HANDLER


class Countdown(BaseHandler):
    """Streams three parts; the input ``fail`` breaks it after two."""

    def preprocess(self, data: bytes, content_type: str | None = None) -> str:
        return data.decode()

    def postprocess(self, output: Any, items: list[Any]) -> list[Any]:
        return list(items)

    def predict_stream(self, item: str) -> Iterator[dict[str, int]]:
        yield {"part": 1}
        yield {"part": 2}
        if item == "fail":
            raise InferenceError("the model broke at part 3")
        yield {"part": 3}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    return _client(tmp_path_factory)


def _client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    folder = tmp_path_factory.mktemp("ts")
    (Path(folder) / "stream.py").write_text(STREAMING_HANDLER)
    specs = [
        tiny_spec(explain={"n_steps": 4, "max_steps": 50}),
        echo_spec(),
        ModelSpec.model_validate(
            {"name": "echo_stream", "handler": "torchserve:stream.py", "base_dir": str(folder)}
        ),
    ]
    handlers: dict[str, BaseHandler] = {}
    for spec in specs:
        handlers[spec.name] = create_handler(spec)
        handlers[spec.name].load()
    handlers["countdown"] = Countdown(tiny_spec(name="countdown"))
    return TestClient(inference_app(LocalRouter(handlers), IngressArgs(access_log="json")))


def test_explanation_map_as_json_or_png(client: TestClient, cat_png: bytes) -> None:
    for path in ("/explanations/tiny", "/explanations/tiny/1.0"):
        answer = client.put(path, content=cat_png)  # curl -T
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "1.0"
        attributions = answer.json()
        assert (len(attributions), len(attributions[0]), len(attributions[0][0])) == (3, 56, 56)
    for asked in ({"headers": {"accept": "image/png"}}, {"params": {"format": "png"}}):
        png = client.post("/explanations/tiny", content=cat_png, **asked)  # type: ignore[arg-type]
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (56, 56)
    two = client.post("/explanations/tiny", files=[("data", cat_png), ("data", cat_png)])
    assert len(two.json()) == 2 and len(two.json()[1]) == 3


def test_explanation_errors(client: TestClient, cat_png: bytes) -> None:
    assert_error(
        client.post("/explanations/tiny?n_steps=51", content=cat_png), 400, "BadRequestException", "1 and 50"
    )
    assert_error(
        client.post("/explanations/tiny?n_steps=2000", content=cat_png), 400, "BadRequestException", "n_steps"
    )
    assert_error(
        client.post("/explanations/tiny?format=gif", content=cat_png), 400, "BadRequestException", "format"
    )
    assert_error(client.post("/explanations/tiny", content=b"junk"), 400, "BadRequestException", "image")
    assert_error(
        client.post("/explanations/nosuch", content=cat_png), 404, "ModelNotFoundException", "nosuch"
    )
    assert_error(client.post("/explanations/echo", content=cat_png), 501, "NotImplementedException", "echo")


def test_server_sent_events_carry_each_part(client: TestClient) -> None:
    with client.stream(
        "POST", "/predictions/countdown", content=b"go", headers={"accept": "text/event-stream"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line.removeprefix("data: ")) for line in r.iter_lines() if line.startswith("data: ")
        ]
    assert events == [{"part": 1}, {"part": 2}, {"part": 3}]


def test_a_failure_midway_ends_the_stream_with_an_error_event(client: TestClient) -> None:
    with client.stream(
        "POST", "/predictions/countdown", content=b"fail", headers={"accept": "text/event-stream"}
    ) as r:
        text = r.read().decode()
    assert r.status_code == 200  # sent with the first part, before the failure
    assert text.count('data: {"part"') == 2
    error = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
    assert error == {"code": 500, "type": "InferenceException", "message": "the model broke at part 3"}
    chunked = client.post("/predictions/countdown?stream=true", content=b"fail")
    lines = [json.loads(line) for line in chunked.text.splitlines()]
    assert lines[:2] == [{"part": 1}, {"part": 2}] and lines[2]["type"] == "InferenceException"


def test_chunked_torchserve_stream_and_whole_answer(client: TestClient) -> None:
    with client.stream("POST", "/predictions/echo_stream?stream=true", json=42) as r:
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers.get("transfer-encoding") == "chunked" or "content-length" not in r.headers
        chunks = list(r.iter_raw())
    assert b"".join(chunks) == b"hellohellohellohello world "
    whole = client.post("/predictions/echo_stream", json=42)
    assert whole.text == "hellohellohellohello world "


def test_stream_errors_before_the_first_part_are_plain_answers(client: TestClient) -> None:
    sse = {"accept": "text/event-stream"}
    assert_error(
        client.post("/predictions/tiny", content=b"junk", headers=sse), 400, "BadRequestException", "image"
    )
    assert_error(
        client.post("/predictions/nosuch", content=b"x", headers=sse), 404, "ModelNotFoundException", "nosuch"
    )
    assert_error(
        client.post("/predictions/countdown?stream=perhaps", content=b"go"),
        400,
        "BadRequestException",
        "stream",
    )
    two = client.post("/predictions/countdown?stream=true", files=[("data", b"a"), ("data", b"b")])
    assert_error(two, 400, "BadRequestException", "one input")
