"""One server with the real model of every example config, plus a custom handler registered
at runtime, a TorchServe handler file that streams and the workflow of configs/workflow.yaml:
the answers a user would check, over real HTTP (and gRPC): explanations of the text model,
streamed speech segments, a stream that stops when its client leaves and one that fails
midway, the config's workflow in GET /workflows."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest
import torch

from benchmarks.stream_first_chunk import repeated_wav
from handlers.archive import write_archive
from tests.e2e.serve_cluster import ROOT, ServeCluster, load_config, serve_run, trust_test_fixtures
from tests.fixtures import real_models as real
from tests.fixtures.models import tiny_classifier
from tests.fixtures.specs import photo_path
from tests.fixtures.torchserve_stubs import torchserve_stubs

pytestmark = pytest.mark.e2e
TOKEN = "e2e-handlers-token"
CUSTOM = "tests/fixtures/custom_handlers/shouting_classifier.py"


def _model_app(config_name: str) -> dict:
    app = next(
        a for a in load_config(config_name)["applications"] if a["name"] not in ("ingress", "management")
    )
    app["args"]["resources"]["num_cpus"] = 0.25  # five models on two CPUs
    return app


def ticker_app() -> dict:
    """The streaming TorchServe handler file of tests/fixtures/custom_handlers as a model."""
    app = _model_app("audio_classifier.yaml")
    app["name"] = "ticker"
    app["args"]["model"] = {
        "name": "ticker",
        "handler": "torchserve:ticker_handler.py",
        "base_dir": str(ROOT / "tests" / "fixtures" / "custom_handlers"),
    }
    app["args"]["resources"]["num_cpus"] = 0.1
    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServeCluster:
    root = tmp_path_factory.mktemp("handlers")
    store = root / "store"
    store.mkdir()
    torch.save(tiny_classifier().state_dict(), root / "tiny.pth")
    shutil.copy(CUSTOM, root / "shouting.py")
    spec = {
        "name": "shouting",
        "handler": "shouting.py:ShoutingClassifier",  # a .py file shipped inside the archive
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "tiny.pth"},
        "preprocess": {"resize": 64, "crop": 56},
    }
    write_archive(spec, [root / "tiny.pth", root / "shouting.py"], store / "shouting.zip")

    base = trust_test_fixtures(load_config("quickstart.yaml"))
    apps = [a for a in base["applications"] if a["name"] in ("ingress", "management")]
    apps += [
        _model_app("object_detector.yaml"),
        _model_app("image_segmenter.yaml"),
        _model_app("text_classifier.yaml"),
        _model_app("audio_classifier.yaml"),
        ticker_app(),  # a TorchServe handler file that streams
        # configs/workflow.yaml's workflow over the language model above (no .war)
        next(a for a in load_config("workflow.yaml")["applications"] if a["name"] == "language_report"),
    ]
    base["applications"] = apps
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_TOKEN": TOKEN,
    }
    with serve_run(base, extra_env=env) as running:

        def all_up() -> bool:
            with running.client() as client:
                return client.get("/ping").status_code == 200  # every model has a ready replica

        running.wait_for(all_up, timeout=300, what="every handler's model")
        yield running


def test_the_example_models_answer_what_they_see(
    server: ServeCluster, cat_png: bytes, coffee_png: bytes
) -> None:
    astronaut = photo_path("astronaut.png").read_bytes()
    with server.client() as client:
        faces = [client.put("/predictions/faces", content=png) for png in (astronaut, coffee_png)]
        assert [r.status_code for r in faces] == [200, 200], faces[0].text
        real.check_astronaut_face(faces[0].json())
        assert faces[1].json() == []

        salient = client.put("/predictions/salient", content=cat_png)
        assert salient.status_code == 200, salient.text
        real.check_cat_mask(salient.json())

        for code, sentence in real.SENTENCES.items():
            answer = client.post(
                "/predictions/language", content=sentence.encode(), headers={"content-type": "text/plain"}
            )
            assert answer.status_code == 200, answer.text
            real.check_language(answer.json(), code)
        as_json = client.post("/predictions/language", json={"text": real.SENTENCES["fr"]})
        real.check_language(as_json.json(), "fr")

        # `curl -T speech.wav`: a PUT of the raw file, as in the README.
        speech = client.put("/predictions/speech", content=real.speech_wav())
        assert speech.status_code == 200, speech.text
        real.check_speech_found(speech.json())
        for clip in (real.noise_wav(), real.silence_wav()):
            real.check_no_speech(client.post("/predictions/speech", content=clip).json())

        # Each handler refuses what is not its kind of input, alone, with a 4xx.
        assert client.post("/predictions/speech", content=cat_png).status_code == 400
        assert client.post("/predictions/language", content=b"\xff\xfe\xfa").status_code == 400
        assert client.post("/predictions/faces", content=real.speech_wav()).status_code == 400


def test_custom_handler_archive_registers_and_answers(server: ServeCluster, cat_png: bytes) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client(timeout=180) as client:
        registered = client.post("/models?url=shouting.zip&num_cpus=0.25", headers=auth)
        assert registered.status_code == 200, registered.text
        result = client.put("/predictions/shouting", content=cat_png).json()
        assert len(result) == 5 and all(label.startswith("LABEL-") for label in result)


def long_recording(copies: int) -> bytes:
    """The speech clip ``copies`` times in a row: a long recording with several segments (the
    one the first-part benchmark streams)."""
    return repeated_wav(real.speech_wav(), copies)


def sse_events(response) -> list[tuple[float, str, dict]]:  # type: ignore[no-untyped-def]
    """(arrival time, event name, data) of each Server-Sent Event, as it arrives."""
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((time.monotonic(), name, json.loads(line.removeprefix("data: "))))
            name = "message"
    return events


def test_text_explanation_is_per_word(server: ServeCluster) -> None:
    text = "The cat is on the table, c'est la vie."
    with server.client() as client:
        answer = client.post(
            "/explanations/language?target=fr", content=text, headers={"content-type": "text/plain"}
        )
        assert answer.status_code == 200, answer.text
        explained = answer.json()
        assert explained["words"] == text.split() and explained["target"] == "fr"
        best = max(zip(explained["importances"], explained["words"], strict=True))
        assert best[1] == "c'est"
        v1 = client.post("/v1/models/language:explain", json={"instances": [text]}).json()
        assert v1["explanations"][0]["words"] == text.split()


def test_speech_segments_stream_as_they_are_found(server: ServeCluster) -> None:
    recording = long_recording(6)  # about 24 s
    with server.client(timeout=120) as client:
        whole = client.post("/predictions/speech", content=recording)
        assert whole.status_code == 200, whole.text
        sse = {"accept": "text/event-stream"}
        with client.stream("POST", "/predictions/speech", content=recording, headers=sse) as streamed:
            assert streamed.status_code == 200
            events = sse_events(streamed)
    segments = [data for _, _, data in events[:-1]]
    assert len(segments) >= 6 and all(name == "message" for _, name, _ in events)
    assert {**events[-1][2], "segments": segments} == whole.json()  # the parts are the answer
    assert events[0][0] < events[-1][0]  # the first segment arrived before the stream ended


def test_torchserve_handler_streams_over_http_and_grpc(server: ServeCluster) -> None:
    request = {"ticks": 4}
    with server.client() as client:
        chunked = client.post("/predictions/ticker?stream=true", json=request)
        assert chunked.status_code == 200, chunked.text
        lines = [json.loads(line) for line in chunked.text.splitlines()]
        assert lines == [{"tick": 0}, {"tick": 1}, {"tick": 2}, {"tick": 3}, {"ticks": 4}]
        whole = client.post("/predictions/ticker", json=request)
        assert whole.json() == lines  # asked whole: TorchServe's parts, then its final answer
    stubs = torchserve_stubs()
    with grpc.insecure_channel(server.grpc_target) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        message = stubs.inference_pb2.PredictionsRequest(
            model_name="ticker", input={"data": json.dumps(request).encode()}
        )
        assert [json.loads(m.prediction) for m in inference.StreamPredictions(message)] == lines
        failing = stubs.inference_pb2.PredictionsRequest(
            model_name="ticker", input={"data": json.dumps({"ticks": 4, "fail_at": 2}).encode()}
        )
        received = []
        with pytest.raises(grpc.RpcError) as caught:
            for m in inference.StreamPredictions(failing):
                received.append(json.loads(m.prediction))
        assert received == [{"tick": 0}, {"tick": 1}]
        assert caught.value.code() == grpc.StatusCode.INTERNAL and "tick 2 failed" in caught.value.details()


def test_bidirectional_grpc_streams_each_part_as_it_is_produced(server: ServeCluster) -> None:
    """StreamPredictions2: each message's parts as its handler sends them, with its sequence_id;
    a message that fails midway ends with its status, and the stream goes on."""
    stubs = torchserve_stubs()
    request = stubs.inference_pb2.PredictionsRequest
    slow = request(model_name="ticker", input={"data": b'{"ticks": 4, "interval": 0.5}'}, sequence_id="a")
    failing = request(model_name="ticker", input={"data": b'{"ticks": 4, "fail_at": 1}'}, sequence_id="b")
    after = request(model_name="ticker", input={"data": b'{"ticks": 1}'}, sequence_id="c")
    arrivals = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        for message in inference.StreamPredictions2(iter([slow, failing, after]), timeout=60):
            arrivals.append((time.monotonic(), message))
    parts = [(m.sequence_id, json.loads(m.prediction)) for _, m in arrivals if not m.HasField("status")]
    assert parts == [
        *[("a", {"tick": n}) for n in range(4)], ("a", {"ticks": 4}),
        ("b", {"tick": 0}),
        ("c", {"tick": 0}), ("c", {"ticks": 1}),
    ]  # fmt: skip
    (failed,) = [m for _, m in arrivals if m.HasField("status")]
    assert failed.sequence_id == "b" and failed.status.code == grpc.StatusCode.INTERNAL.value[0]
    assert "tick 1 failed" in failed.status.message
    # The ticks are 0.5 s apart: the first part came well before the message's last one.
    assert arrivals[4][0] - arrivals[0][0] > 1.0


def test_a_stream_stops_when_its_client_leaves(server: ServeCluster, tmp_path: Path) -> None:
    counter = tmp_path / "ticks"
    request = {"ticks": 2000, "interval": 0.02, "count_file": str(counter)}  # 40 s if left alone
    with (
        server.client() as client,
        client.stream("POST", "/predictions/ticker?stream=true", json=request) as r,
    ):
        for number, _ in enumerate(r.iter_lines()):
            if number == 5:
                break  # leaving the block closes the connection
    time.sleep(3)  # the cancel travels ingress -> replica -> handler's next tick
    stopped = int(counter.read_text())
    time.sleep(2)
    assert int(counter.read_text()) == stopped < 2000


def test_a_failure_midway_ends_the_stream_with_an_error_event(server: ServeCluster) -> None:
    sse = {"accept": "text/event-stream"}
    with server.client() as client:
        with client.stream("POST", "/predictions/ticker", json={"ticks": 5, "fail_at": 3}, headers=sse) as r:
            assert r.status_code == 200
            events = sse_events(r)
        assert [data for _, _, data in events[:3]] == [{"tick": 0}, {"tick": 1}, {"tick": 2}]
        name, error = events[3][1:]
        assert name == "error" and error["code"] == 500 and "tick 3 failed" in error["message"]
        assert client.get("/ping").status_code == 200  # the replica is fine


def test_a_workflow_of_the_config_is_listed_and_described(server: ServeCluster) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client() as client:
        answer = client.post("/wfpredict/language_report", content="Dies ist ein deutscher Satz.")
        assert answer.status_code == 200 and answer.json()["language"] == "de", answer.text
        listed = client.get("/workflows", headers=auth)
        assert listed.status_code == 200, listed.text
        assert listed.json() == {
            "workflows": [{"workflowName": "language_report", "workflowUrl": None, "source": "config"}]
        }
        (described,) = client.get("/workflows/language_report", headers=auth).json()
        assert described["source"] == "config" and described["application"] == "language_report"
        assert described["status"] == "RUNNING"
        assert described["workflowDag"] == (
            "{prepare=[language, statistics], language=[report], statistics=[report]}"
        )
        assert {"node": "language", "kind": "model", "model": "language"} in described["nodes"]
        refused = client.delete("/workflows/language_report", headers=auth)
        assert refused.status_code == 409 and "declared in the Serve config" in refused.json()["message"]
