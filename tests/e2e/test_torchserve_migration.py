"""A TorchServe deployment moves over unchanged: `raytorch torchserve` with TorchServe's command
line and config.properties, as a Dockerfile or systemd unit would run it.

One server for the module, started exactly as TorchServe is started (`--start --ncs
--model-store ... --ts-config config.properties`, from its working directory) with HTTPS on
separate inference and management addresses (a certificate made here with trustme), HTTP
metrics, gRPC with TLS, token authorization on and the model API enabled. The clients are
TorchServe's: the keys of key_file.json in the working directory, `Authorization: Bearer`,
the archive built by torch-model-archiver. It ends with `raytorch torchserve --stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from google.protobuf import empty_pb2

from deployments.common.ports import port_owner
from tests.e2e.serve_cluster import ROOT, free_port
from tests.fixtures import torchserve_archives as ts
from tests.fixtures.local_wheel import build_wheel
from tests.fixtures.torchserve_stubs import torchserve_stubs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
START_S = 300
REGISTER_S = 300


@dataclass
class Deployment:
    """The working directory of a `raytorch torchserve --start` and how to reach its listeners."""

    workdir: Path
    env: dict[str, str]
    ca: Path
    ports: dict[str, int]
    start_output: str

    def url(self, api: str) -> str:
        scheme = "http" if api == "metrics" else "https"
        return f"{scheme}://127.0.0.1:{self.ports[api]}"

    def client(self, api: str) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(base_url=self.url(api), verify=verify, timeout=REGISTER_S)

    def keys(self) -> dict[str, str]:
        content = json.loads((self.workdir / "key_file.json").read_text())
        return {kind: content[kind]["key"] for kind in ("management", "inference", "API")}

    def torchserve(self, *flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "raytorch.cli", "torchserve", *flags]
        return subprocess.run(
            command, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=180
        )

    def log(self) -> str:
        path = self.workdir / "logs" / "raytorch.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_config(workdir: Path, ports: dict[str, int], ca: trustme.CA) -> None:
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    certificate.private_key_pem.write_to_path(str(workdir / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    (workdir / "config.properties").write_text(
        "# A TorchServe config.properties, as TorchServe's users write them\n"
        f"inference_address=https://127.0.0.1:{ports['inference']}\n"
        f"management_address=https://127.0.0.1:{ports['management']}\n"
        f"metrics_address: http://127.0.0.1:{ports['metrics']}\n"
        f"grpc_inference_port={ports['grpc_inference']}\n"
        f"grpc_management_port={ports['grpc_management']}\n"
        "enable_grpc_ssl=true\n"
        "private_key_file=key.pem\n"
        "certificate_file=cert.pem\n"
        "enable_model_api=true\n"
        "metrics_mode=prometheus\n"
        "number_of_netty_threads=4\n"
        "install_py_dep_per_model=true\n"
        "models={\\\n"
        '  "noop": {"1.0": {"minWorkers": 1, "batchSize": 2}}\\\n'
        "}\n"
    )


# A handler that says whether its replica can import the package of the archive's requirements.
PROBE_HANDLER = """
class Probe:
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        try:
            import rt_demo_dep
        except ImportError as exc:
            return [f"ImportError: {exc}" for _ in data]
        return [f"rt_demo_dep {rt_demo_dep.VALUE}" for _ in data]
"""


def build_dependency_archives(store: Path, work: Path) -> None:
    """``withdep.mar``: the probe, a wheel of ``rt_demo_dep`` made here and a requirements
    file naming it (a path inside the archive); ``nodep.mar``: the probe alone;
    ``baddep.mar``: the probe and a requirement pip cannot find (no index here)."""
    work.mkdir()
    (work / "probe.py").write_text(PROBE_HANDLER)
    wheel = build_wheel(work, "rt_demo_dep", "1.0", "VALUE = 42\n")
    (work / "requirements.txt").write_text(f"./{wheel.name}\n")
    files = {"requirements_file": "requirements.txt", "extra_files": wheel.name}
    ts.archive(store, work, "withdep", "1.0", "probe.py", **files)
    ts.archive(store, work, "nodep", "1.0", "probe.py")
    (work / "bad.txt").write_text("rt-no-such-package==9.9\n")
    ts.archive(store, work, "baddep", "1.0", "probe.py", requirements_file="bad.txt")


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    workdir = Path(os.path.realpath("/tmp")) / f"rt-ts-{os.getpid()}"  # short: Ray's socket paths
    workdir.mkdir()
    store = workdir / "model_store"
    store.mkdir()
    ts.build_mnist(store, workdir / "build")
    ts.build_handler_only(store, workdir / "noop", "noop", "1.0", ts.NOOP_CLASS, "service.py")
    build_dependency_archives(store, workdir / "deps")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    ports = {name: free_port() for name in names}
    write_config(workdir, ports, ca)
    env = {**os.environ, "RAY_TMPDIR": str(workdir), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env["PIP_NO_INDEX"] = "1"  # pip installs only what an archive holds: nothing is downloaded
    for name in ("RAY_ADDRESS", "RAYTORCH_STATE_DIR", "RAYTORCH_TOKEN", "TS_CONFIG_FILE"):
        env.pop(name, None)
    started = subprocess.run(
        [
            sys.executable, "-m", "raytorch.cli", "torchserve", "--start", "--ncs",
            "--model-store", "model_store", "--models", "noop=noop.mar", "--ts-config", "config.properties",
            "--dashboard-port", str(free_port()),
        ],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    served = Deployment(workdir, env, workdir / "ca.pem", ports, started.stdout + started.stderr)
    pid_file = workdir / ".raytorch" / "torchserve.pid"
    try:
        assert started.returncode == 0, served.start_output
        deadline = time.monotonic() + START_S
        while True:
            with contextlib.suppress(httpx.HTTPError), served.client("inference") as client:
                if client.get("/ping").status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not up after {START_S}s:\n{served.log()}"
            time.sleep(1)
        yield served
    finally:
        if pid_file.exists():  # the test did not get to --stop: stop it here, and only it
            served.torchserve("--stop")
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def test_start_says_what_took_effect_and_writes_torchserves_key_file(deployment: Deployment) -> None:
    out = deployment.start_output
    inference = (
        f"inference_address = https://127.0.0.1:{deployment.ports['inference']}  [file config.properties]"
    )
    assert inference in out
    assert "model_store = model_store  [flag --model-store]" in out
    assert "load_models = noop=noop.mar  [flag --models]" in out
    assert "number_of_netty_threads (file config.properties) is ignored" in out
    content = json.loads((deployment.workdir / "key_file.json").read_text())
    assert set(content) == {"management", "inference", "API"}
    assert "expiration time" in content["inference"]


def test_startup_model_of_models_flag_with_its_config_settings(deployment: Deployment) -> None:
    keys = deployment.keys()
    with deployment.client("management") as management, deployment.client("inference") as inference:
        deadline = time.monotonic() + REGISTER_S
        while True:
            answer = inference.post("/predictions/noop", content=b"x", headers=bearer(keys["inference"]))
            if answer.status_code == 200:
                break
            assert time.monotonic() < deadline, answer.text + deployment.log()
            time.sleep(1)
        assert answer.text == "OK"
        (described,) = management.get("/models/noop", headers=bearer(keys["management"])).json()
        assert (described["batchSize"], described["minWorkers"]) == (2, 1)  # models={...}


def test_register_and_predict_over_https_with_two_keys(deployment: Deployment) -> None:
    keys = deployment.keys()
    with deployment.client("management") as management, deployment.client("inference") as inference:
        assert management.get("/models").status_code == 401
        assert management.get("/models", headers=bearer(keys["inference"])).status_code == 401
        registered = management.post(
            "/models?url=mnist.mar&initial_workers=1&synchronous=true", headers=bearer(keys["management"])
        )
        assert registered.status_code == 200, registered.text
        assert registered.json()["status"].startswith('Model "mnist" Version: 1.0 registered')
        (described,) = management.get("/models/mnist", headers=bearer(keys["management"])).json()
        assert (described["batchSize"], described["maxBatchDelay"]) == (1, 100)  # TorchServe's

        digit = ts.digit_png(3)
        answer = inference.post("/predictions/mnist", content=digit, headers=bearer(keys["inference"]))
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json(), int) or isinstance(answer.json()[0], int)
        assert inference.post("/predictions/mnist", content=digit).status_code == 401
        refused = inference.post("/predictions/mnist", content=digit, headers=bearer(keys["management"]))
        assert refused.status_code == 401

        # Management is never reachable on the inference address, whatever the key.
        hidden = inference.get("/models", headers=bearer(keys["management"]))
        assert hidden.status_code == 404 and hidden.json()["type"] == "ResourceNotFoundException"
        assert management.post("/predictions/mnist", content=digit).status_code == 404
    with httpx.Client(base_url=deployment.url("metrics"), timeout=60) as metrics:
        text = metrics.get("/metrics").text
        assert re.search(r'ts_inference_requests_total\{[^}]*model_name="mnist"', text), text[:2000]
        assert metrics.get("/models").status_code == 404
    with pytest.raises(httpx.HTTPError):  # a plain-HTTP client is not served on an HTTPS address
        httpx.get(f"http://127.0.0.1:{deployment.ports['inference']}/ping", timeout=10)


def test_grpc_over_tls(deployment: Deployment) -> None:
    stubs = torchserve_stubs()
    credentials = grpc.ssl_channel_credentials(root_certificates=deployment.ca.read_bytes())
    target = f"127.0.0.1:{deployment.ports['grpc_inference']}"
    with grpc.secure_channel(target, credentials) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        assert json.loads(inference.Ping(empty_pb2.Empty(), timeout=60).health) == {"status": "Healthy"}
    target = f"127.0.0.1:{deployment.ports['grpc_management']}"
    with grpc.secure_channel(target, credentials) as channel:
        management = stubs.management_pb2_grpc.ManagementAPIsServiceStub(channel)
        listed = management.ListModels(
            stubs.management_pb2.ListModelsRequest(),
            metadata=(("authorization", f"Bearer {deployment.keys()['management']}"),),
            timeout=60,
        )
        assert "models" in json.loads(listed.msg)


def test_regenerated_inference_key_replaces_the_old_one(deployment: Deployment) -> None:
    old = deployment.keys()
    digit = ts.digit_png(1)
    with deployment.client("management") as management, deployment.client("inference") as inference:
        assert (
            inference.post("/predictions/mnist", content=digit, headers=bearer(old["inference"])).status_code
            == 200
        )
        # TorchServe's token API takes the API key, not the management key.
        assert management.get("/token?type=inference", headers=bearer(old["management"])).status_code == 401
        assert management.get("/token?type=inference", headers=bearer(old["API"])).status_code == 200
        new = deployment.keys()
        assert new["inference"] != old["inference"] and new["management"] == old["management"]
        assert (
            inference.post("/predictions/mnist", content=digit, headers=bearer(old["inference"])).status_code
            == 401
        )
        assert (
            inference.post("/predictions/mnist", content=digit, headers=bearer(new["inference"])).status_code
            == 200
        )


def test_per_model_dependencies_reach_only_their_models_replicas(deployment: Deployment) -> None:
    keys = deployment.keys()
    manage = bearer(keys["management"])
    with deployment.client("management") as management, deployment.client("inference") as inference:
        for name in ("withdep", "nodep"):
            query = f"/models?url={name}.mar&initial_workers=1&synchronous=true"
            registered = management.post(query, headers=manage)
            assert registered.status_code == 200, registered.text + deployment.log()
        answers = {
            name: inference.post(f"/predictions/{name}", content=b"x", headers=bearer(keys["inference"]))
            for name in ("withdep", "nodep")
        }
        assert answers["withdep"].status_code == 200 and answers["withdep"].text == "rt_demo_dep 42"
        assert answers["nodep"].text == "ImportError: No module named 'rt_demo_dep'"
        # A requirement pip cannot install: a 400 naming it and quoting pip, in seconds, no model.
        started = time.monotonic()
        refused = management.post("/models?url=baddep.mar&synchronous=true", headers=manage)
        assert refused.status_code == 400, refused.text
        assert refused.json()["type"] == "DependencyInstallException"
        message = refused.json()["message"]
        assert "rt-no-such-package==9.9" in message and "No matching distribution found" in message
        assert time.monotonic() - started < 120
        assert management.get("/models/baddep", headers=manage).status_code == 404
    installed = list((deployment.workdir / ".raytorch").rglob("py_deps/*/rt_demo_dep.py"))
    assert len(installed) == 1, "installed once, in the state directory's py_deps folder"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stop_stops_what_start_started(deployment: Deployment) -> None:
    pid = int((deployment.workdir / ".raytorch" / "torchserve.pid").read_text())
    stopped = deployment.torchserve("--stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr + deployment.log()
    assert "has stopped" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not (deployment.workdir / "key_file.json").exists()
    busy = [name for name, port in deployment.ports.items() if _listening(port) or port_owner(port)]
    assert busy == []
