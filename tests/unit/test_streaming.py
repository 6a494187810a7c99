"""Streamed answers without Ray: the speech model's segments as they are found, TorchServe
handler files' ``send_intermediate_predict_response``, the replica's part pump (cancel and
failure), explanations interleaved with batches, and the wire format of the parts."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from deployments.inference.streaming import CHUNKED, SSE, encode_error, encode_part, stream_mode
from deployments.model.executor import InferenceExecutor
from deployments.model.stepwise import run_steps, stream_parts
from handlers.errors import BadInputError, InferenceError, StreamCancelled
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.voice_activity import VoiceActivity
from tests.fixtures.torchserve_archives import ECHO_STREAM as STREAMING_HANDLER
from tests.unit.test_torchserve_handlers import ts_api  # noqa: F401 - the ts_api fixture


class ScriptedVad(torch.nn.Module):
    """Speech probabilities from a script, one per call, counting the calls."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.probabilities = probabilities
        self.calls = 0

    def forward(self, frames: torch.Tensor, sample_rate: int) -> torch.Tensor:
        value = self.probabilities[min(self.calls, len(self.probabilities) - 1)]
        self.calls += 1
        return torch.full((frames.shape[0], 1), value)


def scripted_vad(probabilities: list[float]) -> VoiceActivity:
    spec = ModelSpec.model_validate(
        {
            "name": "speech",
            "handler": "voice_activity",
            "source": {"torchscript": "pkg://silero_vad/data/silero_vad.jit"},
            "options": {"max_seconds": 600},
        }
    )
    handler = create_handler(spec)
    assert isinstance(handler, VoiceActivity)
    handler.model = ScriptedVad(probabilities)
    return handler


@pytest.mark.parametrize("seed", range(40))
def test_streamed_segments_are_the_whole_answer_in_parts(seed: int) -> None:
    rng = random.Random(seed)
    probabilities: list[float] = []
    while len(probabilities) < 400:  # speech and pauses of random lengths, some very short
        probabilities += [rng.choice([0.0, 0.2, 0.4, 0.6, 0.9])] * rng.choice([1, 2, 3, 8, 20, 40])
    samples = len(probabilities) * 512 - rng.randint(0, 511)
    handler = scripted_vad(probabilities)
    whole = handler.answer(probabilities[: -(-samples // 512)], samples)
    parts = list(handler.predict_stream(torch.zeros(samples)))
    assert {**parts[-1], "segments": parts[:-1]} == whole


def test_a_segment_is_sent_before_the_recording_is_processed() -> None:
    frames = 31 * 20  # 20 s of 32 ms frames: speech at 1-2 s, then silence
    probabilities = [0.0] * 31 + [0.9] * 31 + [0.0] * (frames - 62)
    handler = scripted_vad(probabilities)
    parts = handler.predict_stream(torch.zeros(frames * 512))
    first = next(parts)
    assert first["start"] < 1.0 < first["end"] < 2.2
    assert handler.model.calls < frames // 4  # about 3 s of the 20 s looked at
    assert list(parts)[-1]["label"] == "speech"


def test_default_stream_is_the_whole_answer(cat_png: bytes) -> None:
    from tests.fixtures.specs import tiny_spec

    handler = create_handler(tiny_spec())
    handler.load()
    item = handler.preprocess(cat_png, "image/png")
    assert list(handler.predict_stream(item)) == [handler.predict_batch([item])[0]]


def test_torchserve_intermediate_responses_stream_or_join(tmp_path: Path, ts_api: str) -> None:  # noqa: F811
    (tmp_path / "stream.py").write_text(STREAMING_HANDLER)
    spec = {"name": "echo_stream", "handler": "torchserve:stream.py", "base_dir": str(tmp_path)}
    handler = create_handler(ModelSpec.model_validate(spec))
    handler.load()
    parts: list[Any] = []
    handler.stream_into(handler.preprocess(b"42", "application/json"), parts.append)
    assert parts == ["hello", "hello", "hello", "hello world "]
    # A client that asked for the whole answer reads what TorchServe's chunked body holds.
    assert handler.predict(b"42", "application/json") == "hellohellohellohello world "


def test_a_cancelled_stream_stops_the_torchserve_handler(tmp_path: Path, ts_api: str) -> None:  # noqa: F811
    (tmp_path / "stream.py").write_text(STREAMING_HANDLER)
    spec = {"name": "echo_stream", "handler": "torchserve:stream.py", "base_dir": str(tmp_path)}
    handler = create_handler(ModelSpec.model_validate(spec))
    handler.load()
    received: list[Any] = []

    def emit(part: Any) -> None:
        if len(received) == 2:
            raise StreamCancelled()
        received.append(part)

    with pytest.raises(StreamCancelled):
        handler.stream_into(handler.preprocess(b"42", "application/json"), emit)
    assert received == ["hello", "hello"]


def counting_producer(produced: list[int], fail_at: int | None = None):  # type: ignore[no-untyped-def]
    def produce(emit) -> None:  # type: ignore[no-untyped-def]
        for i in range(10_000):
            if i == fail_at:
                raise RuntimeError("the model broke")
            produced.append(i)
            emit({"i": i})
            time.sleep(0.001)

    return produce


def test_closing_the_stream_stops_the_producer() -> None:
    async def main() -> tuple[list[Any], list[int]]:
        executor = InferenceExecutor("t", fixed_threads=1)
        produced: list[int] = []
        parts = stream_parts(executor, counting_producer(produced))
        received = [await parts.__anext__() for _ in range(3)]
        await parts.aclose()  # the client went away
        await asyncio.sleep(0.2)
        stopped_at = len(produced)
        await asyncio.sleep(0.2)
        assert len(produced) == stopped_at  # nothing more was produced
        executor.shutdown()
        return received, produced

    received, produced = asyncio.run(main())
    assert received == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert len(produced) < 1000


def test_a_failure_midway_comes_after_the_parts_before_it() -> None:
    async def main() -> list[Any]:
        executor = InferenceExecutor("t", fixed_threads=1)
        received = []
        with pytest.raises(InferenceError, match="RuntimeError: the model broke"):
            async for part in stream_parts(executor, counting_producer([], fail_at=3)):
                received.append(part)
        executor.shutdown()
        return received

    assert asyncio.run(main()) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_prediction_batches_run_between_explanation_chunks() -> None:
    order: list[str] = []

    def explanation():  # type: ignore[no-untyped-def]
        for chunk in range(5):
            order.append(f"chunk{chunk}")
            time.sleep(0.05)
            yield
        return "explained"

    async def main() -> str:
        executor = InferenceExecutor("t", fixed_threads=1)
        explaining = asyncio.ensure_future(run_steps(executor, explanation))
        await asyncio.sleep(0.08)  # during the second chunk
        await executor.run_batch(lambda: order.append("batch"), inputs=1)
        result = await explaining
        executor.shutdown()
        return result

    assert asyncio.run(main()) == "explained"
    assert "batch" in order[1:4]  # after at most one more chunk, long before the last


def test_stream_mode_and_part_encoding() -> None:
    assert stream_mode({"accept": "text/event-stream"}, b"") == SSE
    assert stream_mode({}, b"stream=true") == CHUNKED
    assert stream_mode({}, b"stream=false") is None and stream_mode({}, b"") is None
    with pytest.raises(BadInputError, match="stream must be true or false"):
        stream_mode({}, b"stream=maybe")
    assert encode_part({"start": 0.5}, SSE) == b'data: {"start": 0.5}\n\n'
    assert encode_part("two\nlines", SSE) == b"data: two\ndata: lines\n\n"
    assert encode_part("hello", CHUNKED) == b"hello" and encode_part(b"\x00", CHUNKED) == b"\x00"
    assert encode_part({"start": 0.5}, CHUNKED) == b'{"start": 0.5}\n'
    error = InferenceError("it broke")
    assert encode_error(error, SSE).startswith(b"event: error\ndata: ")
    assert json.loads(encode_error(error, CHUNKED)) == {
        "code": 500,
        "type": "InferenceException",
        "message": "it broke",
    }


def test_executor_thread_is_the_one_that_streams() -> None:
    # The handler runs on the inference thread (torch's threads belong to it), not the loop's.
    threads: list[str] = []

    async def main() -> None:
        executor = InferenceExecutor("t", fixed_threads=1)
        async for _ in stream_parts(
            executor, lambda emit: (threads.append(threading.current_thread().name), emit(1))
        ):
            pass
        executor.shutdown()

    asyncio.run(main())
    assert threads[0].startswith("inference-t")


def test_both_import_paths_of_send_intermediate_predict_response_are_provided(tmp_path: Path) -> None:
    from handlers.torchserve.names import check_handler_file

    for module in ("ts.handler_utils.utils", "ts.protocol.otf_message_handler"):
        (tmp_path / "old.py").write_text(STREAMING_HANDLER.replace("ts.handler_utils.utils", module))
        check_handler_file("torchserve:old.py", str(tmp_path))  # raises when a module is missing
