"""Every protocol answers from the one data plane (deployments/inference/data_plane.py): with
one model down and one up, TorchServe's REST and gRPC, KServe v1, and the Open Inference
Protocol over REST and gRPC all give the same verdicts on liveness, readiness and metadata
(real HTTP and gRPC servers in-process, real handlers, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import empty_pb2

from deployments.common.settings import IngressArgs
from handlers.handler_catalog import create_handler
from tests.fixtures.inference import LocalRouter
from tests.fixtures.live_servers import LiveServers, live_servers
from tests.fixtures.specs import scorer_spec, tiny_spec
from tests.fixtures.torchserve_stubs import torchserve_stubs

DOWN_REASON = "replica failed to start: out of memory"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServers]:
    handlers = {}
    for spec in (tiny_spec(), scorer_spec()):
        handlers[spec.name] = create_handler(spec)
        handlers[spec.name].load()
    router = LocalRouter(handlers)
    router.down[tiny_spec().name] = DOWN_REASON
    logs = str(tmp_path_factory.mktemp("logs"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYTORCH_LOG_DIR", logs)
        with live_servers(router, IngressArgs(log_dir=logs)) as servers:
            yield servers


def test_every_protocol_says_the_down_model_is_not_ready_and_the_other_is(live: LiveServers) -> None:
    down, up = tiny_spec().name, scorer_spec().name
    http = httpx.Client(base_url=f"http://{live.http_url}", timeout=10)
    oip = triton_grpc.InferenceServerClient(live.grpc_target)
    stubs = torchserve_stubs()

    # Server readiness: one model down makes the server not ready, on every protocol.
    assert http.get("/ping").json()["status"] == "Unhealthy"
    assert http.get("/v2/health/ready").status_code == 503
    assert oip.is_server_live() and not oip.is_server_ready()
    assert http.get("/v2/health/live").json() == {"live": True}
    with grpc.insecure_channel(live.grpc_target) as channel:
        inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        ping = inference.Ping(empty_pb2.Empty(), timeout=10)
    assert json.loads(ping.health)["status"] == "Unhealthy"

    # A model's readiness: the same verdict, and over OIP REST the same reason and Retry-After.
    assert http.get(f"/v1/models/{down}").json() == {"name": down, "ready": False}
    assert http.get(f"/v1/models/{up}").json() == {"name": up, "ready": True}
    answer = http.get(f"/v2/models/{down}/ready")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert DOWN_REASON in answer.json()["error"]
    assert http.get(f"/v2/models/{up}/ready").json()["ready"] is True
    assert not oip.is_model_ready(down) and oip.is_model_ready(up)
    assert not oip.is_model_ready("no-such-model")  # Triton's answer: not ready, not an error
    assert http.get("/v1/models/no-such-model").status_code == 404


def test_metadata_is_the_same_over_rest_and_grpc(live: LiveServers) -> None:
    up = scorer_spec().name
    rest = httpx.get(f"http://{live.http_url}/v2/models/{up}", timeout=10).json()
    grpc_metadata = triton_grpc.InferenceServerClient(live.grpc_target).get_model_metadata(up, as_json=True)
    assert rest["name"] == grpc_metadata["name"] == up
    assert rest["versions"] == grpc_metadata["versions"] == ["1.0"]
    assert rest["platform"] == grpc_metadata["platform"]
    assert [i["name"] for i in rest["inputs"]] == [i["name"] for i in grpc_metadata["inputs"]]
    assert [o["name"] for o in rest["outputs"]] == [o["name"] for o in grpc_metadata["outputs"]]
    server = httpx.get(f"http://{live.http_url}/v2", timeout=10).json()
    grpc_server = triton_grpc.InferenceServerClient(live.grpc_target).get_server_metadata(as_json=True)
    assert server["name"] == grpc_server["name"] == "raytorch"
    assert server["extensions"] == grpc_server["extensions"]
