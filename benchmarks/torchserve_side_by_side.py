"""One config.properties, two servers: TorchServe 0.12 and `raytorch torchserve`, asked the same
calls, and a table of what agrees and what differs (docs/torchserve-compatibility.md, "Moving a
deployment", keeps a run's table).

The file has separate inference, management and metrics addresses, HTTPS on the first two (a
certificate made here with trustme), token authorization on (TorchServe 0.12's default: the
management, inference and API keys of key_file.json) and the model API enabled. Each server
starts in a folder of its own holding the same file, certificate and model store, with the same
flags (`--start --ncs --model-store model_store --ts-config config.properties`), one after the
other on the same ports (two servers at once would not fit a small machine). raytorch gets one
more flag, `--dashboard-port`, so its Ray dashboard cannot meet another cluster's on this machine.

Needs Java 11+, TorchServe 0.12 and torch-model-archiver (`pip install 'raytorch[bench]'`).

    python benchmarks/torchserve_side_by_side.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trustme
from cryptography.hazmat.primitives import serialization

from benchmarks.torchserve_workflows import START
from tests.e2e.serve_cluster import ROOT, free_port, stop
from tests.fixtures import torchserve_archives as archives

UP_S = 300
FLAGS = ["--start", "--ncs", "--model-store", "model_store", "--ts-config", "config.properties"]
# What describe answers that both servers have; the rest (timestamps, PIDs, memory) differs.
DESCRIBED = ("modelName", "modelVersion", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
# TorchServe's Prometheus series a dashboard of theirs reads.
SERIES = ("ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds")


def config_text(ports: dict[str, int]) -> str:
    """The config.properties both servers read."""
    return (
        f"inference_address=https://127.0.0.1:{ports['inference']}\n"
        f"management_address=https://127.0.0.1:{ports['management']}\n"
        f"metrics_address=http://127.0.0.1:{ports['metrics']}\n"
        f"grpc_inference_port={ports['grpc_inference']}\n"
        f"grpc_management_port={ports['grpc_management']}\n"
        "private_key_file=key.pem\n"
        "certificate_file=cert.pem\n"
        "enable_model_api=true\n"
        "metrics_mode=prometheus\n"
        "default_workers_per_model=1\n"
    )


def write_certificate(folder: Path) -> None:
    """ca.pem, cert.pem and key.pem for 127.0.0.1. RSA, its key in PKCS#8: TorchServe's
    frontend reads no other (an EC key, trustme's default, stops it at start with "Invalid
    configuration: Input byte array has incorrect ending byte")."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    certificate = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    key = serialization.load_pem_private_key(certificate.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "key.pem").write_bytes(pkcs8)
    certificate.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))


def prepare(folder: Path, shared: Path) -> None:
    """A server's working folder: a copy of the shared files (config, certificate, store)."""
    shutil.copytree(shared, folder)


# Each answer as it came (status, the body's start), written beside the server's logs.
RAW: list[tuple[str, int, str]] = []


def summary(reply: httpx.Response, pick: Callable[[object], object] | None = None) -> str:
    """The status and what of the body both servers should agree on."""
    RAW.append((f"{reply.request.method} {reply.request.url.path}", reply.status_code, reply.text[:400]))
    try:
        body: object = reply.json()
    except ValueError:
        body = reply.text.strip()[:80]
    if reply.status_code >= 400 and isinstance(body, dict):
        body = body.get("type") or body.get("message")
    elif pick is not None:
        try:
            body = pick(body)
        except (AttributeError, KeyError, TypeError, ValueError):
            body = f"unexpected: {str(body)[:60]}"
    return f"{reply.status_code} {json.dumps(body) if not isinstance(body, str) else body}"


def described(body: object) -> object:
    (model,) = body
    workers = [worker.get("status") for worker in model.get("workers", [])]
    return {**{key: model.get(key) for key in DESCRIBED}, "workers": workers}


def exercise(folder: Path, ports: dict[str, int]) -> dict[str, str]:
    """The calls, in order, and each answer's summary."""
    keys = {kind: entry["key"] for kind, entry in json.loads((folder / "key_file.json").read_text()).items()}
    verify = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    inference = httpx.Client(base_url=f"https://127.0.0.1:{ports['inference']}", verify=verify, timeout=UP_S)
    management = httpx.Client(
        base_url=f"https://127.0.0.1:{ports['management']}", verify=verify, timeout=UP_S
    )
    metrics = httpx.Client(base_url=f"http://127.0.0.1:{ports['metrics']}", timeout=60)

    def bearer(kind: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[kind]}"}

    digit = archives.digit_png(3)
    answers: dict[str, str] = {}
    with inference, management, metrics:
        answers["key_file.json's keys"] = " ".join(sorted(keys))
        answers["GET /ping, no key"] = summary(inference.get("/ping"))
        answers["GET /ping, inference key"] = summary(inference.get("/ping", headers=bearer("inference")))
        answers["GET /models, no key"] = summary(management.get("/models"))
        answers["GET /models, inference key"] = summary(
            management.get("/models", headers=bearer("inference"))
        )
        register = "/models?url=mnist.mar&initial_workers=1&synchronous=true"
        answers["POST /models (register), management key"] = summary(
            management.post(register, headers=bearer("management")), lambda body: body.get("status")
        )
        answers["GET /models (list)"] = summary(
            management.get("/models", headers=bearer("management")),
            lambda body: sorted(model["modelName"] for model in body["models"]),
        )
        answers["GET /models/mnist (describe)"] = summary(
            management.get("/models/mnist", headers=bearer("management")), described
        )
        answers["POST /predictions/mnist, inference key"] = summary(
            inference.post("/predictions/mnist", content=digit, headers=bearer("inference"))
        )
        answers["POST /predictions/mnist, no key"] = summary(
            inference.post("/predictions/mnist", content=digit)
        )
        answers["POST /predictions/mnist, management key"] = summary(
            inference.post("/predictions/mnist", content=digit, headers=bearer("management"))
        )
        answers["GET /models on the inference address"] = summary(
            inference.get("/models", headers=bearer("management"))
        )
        text = metrics.get("/metrics").text
        answers["GET /metrics (metrics address)"] = " ".join(s for s in SERIES if s in text) or "(none)"
        answers["GET /token?type=inference, management key"] = summary(
            management.get("/token?type=inference", headers=bearer("management"))
        )
        old = keys["inference"]
        answers["GET /token?type=inference, API key"] = summary(
            management.get("/token?type=inference", headers=bearer("API")),
            lambda body: sorted(body),
        )
        keys.update({k: v["key"] for k, v in json.loads((folder / "key_file.json").read_text()).items()})
        answers["key_file.json's inference key after it"] = "changed" if keys["inference"] != old else "same"
        answers["predict with the old inference key"] = summary(
            inference.post("/predictions/mnist", content=digit, headers={"Authorization": f"Bearer {old}"})
        )
        answers["predict with the new inference key"] = summary(
            inference.post("/predictions/mnist", content=digit, headers=bearer("inference"))
        )
        answers["DELETE /models/mnist, management key"] = summary(
            management.delete("/models/mnist", headers=bearer("management"))
        )
        try:
            plain = httpx.get(f"http://127.0.0.1:{ports['inference']}/ping", timeout=10).status_code
            answers["plain HTTP to the HTTPS address"] = f"answered {plain}"
        except httpx.HTTPError as exc:
            answers["plain HTTP to the HTTPS address"] = f"refused ({type(exc).__name__})"
    (folder / "answers.json").write_text(json.dumps(RAW, indent=1))
    RAW.clear()
    return answers


def wait_up(folder: Path, ports: dict[str, int], log: Path, alive: Callable[[], bool]) -> None:
    """Until key_file.json is written and the inference address answers /ping over HTTPS (with
    the inference key: TorchServe 0.12 asks for it on /ping too);
    SystemExit with the log's end when the server is gone or not up in time."""
    verify = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    deadline = time.monotonic() + UP_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):  # ValueError: half-written
            if (folder / "key_file.json").exists():
                key = json.loads((folder / "key_file.json").read_text())["inference"]["key"]
                ping = httpx.get(
                    f"https://127.0.0.1:{ports['inference']}/ping",
                    verify=verify,
                    headers={"Authorization": f"Bearer {key}"},
                )
                if ping.status_code == 200:
                    return
        if not alive():
            raise SystemExit(f"it stopped; its log:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(1)
    raise SystemExit(f"not up after {UP_S}s; its log: {log}")


def run_torchserve(folder: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {**os.environ, "LOG_LOCATION": str(folder / "logs"), "METRICS_LOCATION": str(folder / "logs")}
    env.pop("PYTHONPATH", None)  # TorchServe's own ts package, not raytorch's checkout
    log = folder / "torchserve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", START, *FLAGS, "--foreground"],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_up(folder, ports, log, lambda: process.poll() is None)
        return exercise(folder, ports)
    finally:
        stop(process)  # its process group: the Java frontend and its Python workers


def run_raytorch(folder: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {**os.environ, "RAY_TMPDIR": str(folder), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("RAY_ADDRESS", "RAYTORCH_STATE_DIR", "RAYTORCH_TOKEN", "TS_CONFIG_FILE"):
        env.pop(name, None)
    command = [sys.executable, "-m", "raytorch.cli", "torchserve"]
    started = subprocess.run(
        [*command, *FLAGS, "--dashboard-port", str(free_port())],
        cwd=folder, env=env, capture_output=True, text=True, timeout=UP_S,
    )  # fmt: skip
    try:
        if started.returncode != 0:
            raise SystemExit(f"raytorch torchserve --start failed:\n{started.stdout}{started.stderr}")
        pid = int((folder / ".raytorch" / "torchserve.pid").read_text())
        wait_up(folder, ports, folder / "logs" / "raytorch.log", lambda: Path(f"/proc/{pid}").exists())
        return exercise(folder, ports)
    finally:
        subprocess.run([*command, "--stop"], cwd=folder, env=env, capture_output=True, timeout=UP_S)


def table(theirs: dict[str, str], ours: dict[str, str]) -> str:
    """A Markdown table of the answers, one row per call."""
    rows = ["| call | TorchServe 0.12 | raytorch | same |", "|---|---|---|---|"]
    for call in theirs:
        a, b = theirs[call], ours.get(call, "(not asked)")
        rows.append(f"| {call} | `{a}` | `{b}` | {'yes' if a == b else '**no**'} |")
    return "\n".join(rows)


def main() -> None:
    # SIGTERM unwinds as an exception, so each server is stopped by its `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(os.path.realpath("/tmp")) / f"ts-side-{os.getpid()}"  # short: Ray's socket paths
    shared = root / "shared"
    (shared / "model_store").mkdir(parents=True)
    archives.build_mnist(shared / "model_store", root / "build")
    write_certificate(shared)
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    ports = {name: free_port() for name in names}
    (shared / "config.properties").write_text(config_text(ports))
    prepare(root / "torchserve", shared)
    prepare(root / "raytorch", shared)
    theirs = run_torchserve(root / "torchserve", ports)
    ours = run_raytorch(root / "raytorch", ports)
    print(f"config.properties:\n{config_text(ports)}")
    print(table(theirs, ours))
    print(f"\n(logs: {root})")


if __name__ == "__main__":
    main()
