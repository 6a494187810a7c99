"""Issue 24's request-parsing findings through the ingress's ASGI app in-process: big bodies are
parsed beside the event loop (``/ping`` keeps answering), requested outputs are checked before
the model runs, and KServe v1 answers infinities and NaN as JSON can carry them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.common.settings import IngressArgs
from deployments.inference import http_entry, kserve_v1, open_inference
from handlers.handler_catalog import create_handler
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import scorer_spec, tiny_spec
from tests.integration.test_http_api import assert_error
from tests.integration.test_open_inference import assert_oip_error

LIMIT = 4_000_000
PING_WITHIN_S = 0.4  # the issue asks 100 ms; room for a loaded 2-core CI machine, still under the 0.6 s parse
BIG = 200_000  # bytes: over deployments.inference.off_loop.OFF_LOOP_BYTES


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    handlers = {}
    for spec in (tiny_spec(), scorer_spec()):
        handlers[spec.name] = create_handler(spec)
        handlers[spec.name].load()
    return LocalRouter(handlers)


@pytest.fixture
def client(router: LocalRouter, tmp_path, monkeypatch) -> TestClient:
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    return TestClient(inference_app(router, IngressArgs(max_body_bytes=LIMIT)))


def slowly(parse: Callable[..., Any]) -> Callable[..., Any]:
    """``parse`` after 0.6 s of Python work: what a big body costs a parser written in Python."""

    def slow(*args: Any) -> Any:
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline:
            sum(range(1000))
        return parse(*args)

    return slow


def multipart(size: int) -> tuple[bytes, str]:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="data"; filename="x"\r\n\r\n'
        + b"x" * size
        + b"\r\n--b--\r\n"
    )
    return body, "multipart/form-data; boundary=b"


def v2_body(size: int) -> bytes:
    return b'{"inputs": [{"name": "d", "datatype": "BYTES", "shape": [1], "data": ["' + b"a" * size + b'"]}]}'


@pytest.mark.parametrize(
    ("module", "parser", "path", "body", "content_type"),
    [
        (open_inference, "parse_request", "/v2/models/tiny/infer", v2_body(BIG), "application/json"),
        (
            kserve_v1,
            "parse_instances",
            "/v1/models/tiny:predict",
            b'{"instances": ["' + b"a" * BIG + b'"]}',
            None,
        ),
        (http_entry, "split_inputs", "/predictions/tiny", *multipart(BIG)),
    ],
    ids=["v2", "v1", "multipart"],
)
def test_a_big_body_is_parsed_while_ping_keeps_answering(
    router: LocalRouter,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    parser: str,
    path: str,
    body: bytes,
    content_type: str | None,
) -> None:
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(module, parser, slowly(getattr(module, parser)))
    app = inference_app(router, IngressArgs(max_body_bytes=LIMIT))

    async def scenario() -> tuple[int, list[float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://raytorch") as http:
            headers = {"content-type": content_type} if content_type else {}
            big = asyncio.create_task(http.post(path, content=body, headers=headers))
            pings = []
            while not big.done():
                # Counted from before the pause: a loop blocked meanwhile shows in the time.
                started = time.perf_counter()
                await asyncio.sleep(0.02)
                assert (await http.get("/ping")).status_code == 200
                pings.append(time.perf_counter() - started - 0.02)
            return (await big).status_code, pings

    status, pings = asyncio.run(scenario())
    assert status == 400  # the tiny model's answer to an input that is no image
    assert pings and max(pings) < PING_WITHIN_S, pings


def test_duplicate_outputs_are_400_at_once(client: TestClient) -> None:
    request = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "scores"}] * 50_000,
    }
    started = time.perf_counter()
    response = client.post("/v2/models/scorer/infer", json=request)
    assert_oip_error(response, 400, "more than once: scores")
    assert time.perf_counter() - started < 5


def test_unknown_outputs_are_400_before_the_model_runs(
    client: TestClient, router: LocalRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    predict = router.predict

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await predict(*args, **kwargs)

    monkeypatch.setattr(router, "predict", counted)
    request = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": f"nope{i}"} for i in range(100)],
    }
    response = client.post("/v2/models/scorer/infer", json=request)
    assert_oip_error(response, 400, "unknown output nope0, nope1, nope2, nope3, nope4 and 95 more")
    assert calls == []


def test_v1_answers_infinities_and_nan_as_null(client: TestClient) -> None:
    # JSON has no infinity, but Python's parser reads the literals: the scorer then answers
    # [inf + -inf, inf - -inf] = [nan, inf] (see tests.fixtures.models.LinearScorer).
    body = b'{"instances": [[Infinity, -Infinity, 0, 0], [1, 2, 3, 4]]}'
    response = client.post("/v1/models/scorer:predict", content=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [{"scores": [None, None]}, {"scores": [10.0, 5.0]}]}


def test_v1_integers_past_the_digit_limit_are_400(client: TestClient) -> None:
    body = b'{"instances": [[' + b"9" * 5000 + b", 0, 0, 0]]}"
    response = client.post("/v1/models/scorer:predict", content=body)
    assert_error(response, 400, "BadRequestException", "more than 4300 digits")
