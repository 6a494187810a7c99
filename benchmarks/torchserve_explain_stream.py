"""Explanations and streamed answers on TorchServe 0.12 and on raytorch, same archives, side by
side (docs/torchserve-compatibility.md records the output).

The archives, built with torch-model-archiver: TorchServe's MNIST example (its network and a
``ts.torch_handler`` image-classifier subclass, seeded weights; TorchServe explains it with
Captum's Integrated Gradients), the echo handler of TorchServe's streaming test
(``send_intermediate_predict_response`` three times, then the answer) and the e2e tests'
``ticker_handler.py`` (JSON parts, a failure midway on request). Both servers start here on
ports of their own and are stopped by their process groups.

Needs Java 11+ and TorchServe's package (``pip install 'raytorch[bench]'``).

    python benchmarks/torchserve_explain_stream.py
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx

from benchmarks import torchserve_runner as runner
from tests.e2e.serve_cluster import ROOT, free_port, load_config, serve_run
from tests.fixtures import torchserve_archives as archives
from tests.fixtures.torchserve_stubs import torchserve_stubs

TOKEN = "bench-explain-stream"
TICKER = ROOT / "tests" / "fixtures" / "custom_handlers" / "ticker_handler.py"
MODELS = ("mnist", "echo_stream", "ticker")


def build(store: Path, work: Path) -> None:
    """The three archives in ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    archives.build_mnist(store, work / "mnist")
    archives.build_handler_only(store, work / "echo", "echo_stream", "1.0", archives.ECHO_STREAM, "echo.py")
    archives.build_handler_only(
        store, work / "ticker", "ticker", "1.0", TICKER.read_text(), "ticker_handler.py"
    )


def chunks(client: httpx.Client, url: str, **request: Any) -> tuple[int, list[bytes], str]:
    """The status, the body's pieces as the client read them, and how the body ended."""
    pieces: list[bytes] = []
    with client.stream("POST", url, **request) as reply:
        try:
            pieces.extend(piece for piece in reply.iter_raw() if piece)
        except httpx.HTTPError as exc:
            return reply.status_code, pieces, f"{type(exc).__name__}: {exc}"
        return reply.status_code, pieces, "complete"


def grpc_parts(target: str, rpc: str, model: str, body: bytes) -> list[str]:
    """Each message of a TorchServe gRPC streaming call: its prediction, or its status."""
    stubs = torchserve_stubs()
    with grpc.insecure_channel(target) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        message = stubs.inference_pb2.PredictionsRequest(
            model_name=model, input={"data": body}, sequence_id="s1"
        )
        try:
            if rpc == "StreamPredictions":
                replies = list(inference.StreamPredictions(message, timeout=60))
            else:
                replies = list(inference.StreamPredictions2(iter([message]), timeout=60))
        except grpc.RpcError as exc:
            return [f"rpc error {exc.code().name}: {exc.details()}"]
    return [
        r.prediction.decode() if not r.HasField("status") else f"status {r.status.code}: {r.status.message}"
        for r in replies
    ]


def questions(base: str, grpc_target: str) -> list[tuple[str, Callable[[httpx.Client], Any]]]:
    """Each comparison: a label and how to ask it of a server at ``base``."""
    digit = archives.digit_png(3)
    png = {"content": digit, "headers": {"Content-Type": "image/png"}}
    ticks = json.dumps({"ticks": 4, "interval": 0.2}).encode()
    failing = json.dumps({"ticks": 4, "fail_at": 2, "interval": 0.2}).encode()

    def answer(reply: httpx.Response) -> Any:
        try:
            return reply.status_code, reply.json()
        except ValueError:
            return reply.status_code, reply.text

    return [
        ("mnist prediction", lambda c: answer(c.post(f"{base}/predictions/mnist", **png))),
        (
            "mnist explanation, target=7",
            lambda c: answer(c.post(f"{base}/explanations/mnist?target=7", **png)),
        ),
        ("mnist explanation, no target", lambda c: answer(c.post(f"{base}/explanations/mnist", **png))),
        ("echo_stream, whole", lambda c: chunks(c, f"{base}/predictions/echo_stream", content=b"42")),
        (
            "echo_stream, streamed",
            lambda c: chunks(c, f"{base}/predictions/echo_stream?stream=true", content=b"42"),
        ),
        ("ticker, streamed", lambda c: chunks(c, f"{base}/predictions/ticker?stream=true", content=ticks)),
        (
            "ticker, fails at tick 2",
            lambda c: chunks(c, f"{base}/predictions/ticker?stream=true", content=failing),
        ),
        (
            "ticker, gRPC StreamPredictions",
            lambda c: grpc_parts(grpc_target, "StreamPredictions", "ticker", ticks),
        ),
        (
            "ticker, gRPC StreamPredictions2",
            lambda c: grpc_parts(grpc_target, "StreamPredictions2", "ticker", ticks),
        ),
        (
            "ticker fails, gRPC StreamPredictions",
            lambda c: grpc_parts(grpc_target, "StreamPredictions", "ticker", failing),
        ),
    ]


def ask(base: str, grpc_target: str) -> dict[str, Any]:
    """Every question's answer from the server at ``base``."""
    answers = {}
    with httpx.Client(timeout=120) as client:
        for label, question in questions(base, grpc_target):
            answers[label] = question(client)
    return answers


def compare(label: str, theirs: Any, ours: Any) -> None:
    """Print both answers (attribution maps as their shape and largest difference)."""
    print(f"## {label}")
    if "explanation" in label and theirs[0] == ours[0] == 200:
        import numpy as np

        a, b = np.asarray(theirs[1], dtype=float), np.asarray(ours[1], dtype=float)
        if a.shape == b.shape:
            diff, top = float(np.abs(a - b).max()), float(np.abs(a).max())
            print(f"shapes {list(a.shape)} both; largest difference {diff:.3g} (largest value {top:.3g})")
        else:
            print(f"shapes differ: TorchServe {list(a.shape)}, raytorch {list(b.shape)}")
        print()
        return
    print(f"TorchServe: {theirs!r}")
    print(f"raytorch:   {ours!r}\n")


def on_torchserve(store: Path, work: Path) -> dict[str, Any]:
    grpc_port, grpc_management = free_port(), free_port()
    lines = (f"grpc_inference_port={grpc_port}", f"grpc_management_port={grpc_management}")
    also = tuple(f"{m}={m}.mar" for m in MODELS[1:])
    with runner.torchserve(
        store, "mnist.mar", "mnist", "default", work / "ts", also=also, lines=lines
    ) as server:
        runner.wait_first_prediction(server, "mnist", archives.digit_png(3), timeout=300)
        return ask(server.inference_url, f"127.0.0.1:{grpc_port}")


def on_raytorch(store: Path, work: Path) -> dict[str, Any]:
    config = load_config("quickstart.yaml")
    config["applications"] = [a for a in config["applications"] if a["name"] in ("ingress", "management")]
    env = {
        "RAYTORCH_STATE_DIR": str(work / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_LOG_DIR": str(work / "logs"),
        "RAYTORCH_TOKEN": TOKEN,
        "PYTHONPATH": str(ROOT),
    }
    with serve_run(config, extra_env=env) as cluster:
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def up() -> bool:
            with cluster.client() as client:
                return client.get("/models", headers=auth).status_code == 200

        cluster.wait_for(up, timeout=300, what="the management API")
        with httpx.Client(base_url=cluster.base_url, headers=auth, timeout=600) as client:
            for model in MODELS:
                reply = client.post(f"/models?url={model}.mar&initial_workers=1&synchronous=true")
                reply.raise_for_status()
        return ask(cluster.base_url, cluster.grpc_target)


def main() -> None:
    print(f"Java: {runner.java_version()}")
    root = Path(tempfile.mkdtemp(prefix="ts-explain-stream-"))
    store = root / "store"
    build(store, root / "work")
    started = time.monotonic()
    theirs = on_torchserve(store, root)
    ours = on_raytorch(store, root)
    for label in theirs:
        compare(label, theirs[label], ours[label])
    for name, answers in (("TorchServe", theirs), ("raytorch", ours)):
        same = answers["mnist explanation, target=7"] == answers["mnist explanation, no target"]
        print(f"{name}: the target=7 map {'equals' if same else 'differs from'} the map without a target")
    print(f"({time.monotonic() - started:.0f}s; TorchServe's log: {root / 'ts' / 'torchserve.log'})")


if __name__ == "__main__":
    main()
