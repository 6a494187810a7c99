"""TorchServe 0.12's key file (deployments/common/ts_keys.py) and the one-API-per-listener filter
with its token API (deployments/inference/api_filter.py). No Ray: the filter is tested as an
ASGI app in front of a stand-in entry point."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from deployments.common.torchserve_args import Cors
from deployments.common.ts_keys import KeyFile, write_new_key_file
from deployments.inference.api_filter import ApiFilter, api_of, with_cors
from handlers.errors import BadInputError, UnauthorizedError


def test_key_file_layout_is_torchserves(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    content = write_new_key_file(path, 60)
    assert json.loads(path.read_text()) == content
    assert set(content) == {"management", "inference", "API"}
    assert set(content["management"]) == {"key", "expiration time"}
    assert content["inference"]["expiration time"].endswith("Z")
    assert set(content["API"]) == {"key"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len({content[kind]["key"] for kind in content}) == 3


def test_each_key_opens_only_its_api(tmp_path: Path) -> None:
    content = write_new_key_file(tmp_path / "key_file.json")
    keys = KeyFile(tmp_path / "key_file.json")
    keys.check(f"Bearer {content['inference']['key']}", "inference")
    keys.check(f"bearer  {content['management']['key']}", "management")
    with pytest.raises(UnauthorizedError):
        keys.check(f"Bearer {content['inference']['key']}", "management")
    with pytest.raises(UnauthorizedError, match="Bearer"):
        keys.check(None, "inference")


def test_regenerated_key_replaces_the_old_one_for_every_reader(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    old = write_new_key_file(path)["inference"]["key"]
    writer, reader = KeyFile(path), KeyFile(path)  # two processes sharing the file
    reader.check(f"Bearer {old}", "inference")
    new = writer.regenerate("inference")["inference"]["key"]
    with pytest.raises(UnauthorizedError):
        reader.check(f"Bearer {old}", "inference")
    reader.check(f"Bearer {new}", "inference")
    with pytest.raises(BadInputError, match="type=management or type=inference"):
        writer.regenerate("API")


def test_expired_key_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    content = write_new_key_file(path)
    content["management"]["expiration time"] = "2020-01-01T00:00:00Z"
    path.write_text(json.dumps(content))
    with pytest.raises(UnauthorizedError, match=r"expired.*type=management"):
        KeyFile(path).check(f"Bearer {content['management']['key']}", "management")


def test_paths_belong_to_apis() -> None:
    assert api_of("/models") == api_of("/models/m/1.0") == api_of("/token") == "management"
    assert api_of("/metrics") == "metrics"
    assert api_of("/predictions/m") == api_of("/ping") == api_of("/v2/health/live") == "inference"
    assert api_of("/") is None and api_of("/api-description") is None


async def _echo(scope: dict, receive, send) -> None:
    while scope["type"] == "lifespan":  # TestClient's start and stop
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return
    body = json.dumps({"path": scope["path"]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def _client(app) -> TestClient:
    return TestClient(app)


def test_a_listener_answers_only_its_api(tmp_path: Path) -> None:
    with _client(ApiFilter(_echo, {"inference"})) as client:
        assert (client.post("/predictions/m")).json() == {"path": "/predictions/m"}
        for path in ("/models", "/models/m", "/metrics", "/token"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["type"] == "ResourceNotFoundException"
    with _client(ApiFilter(_echo, {"metrics"})) as client:
        assert (client.get("/metrics")).status_code == 200
        assert (client.post("/predictions/m")).status_code == 404


def test_token_api_needs_the_api_key(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    content = write_new_key_file(path)
    app = ApiFilter(_echo, {"management"}, KeyFile(path))
    api_key = {"Authorization": f"Bearer {content['API']['key']}"}
    with _client(app) as client:
        management_key = {"Authorization": f"Bearer {content['management']['key']}"}
        assert (client.get("/token?type=inference", headers=management_key)).status_code == 401
        assert (client.get("/token?type=bogus", headers=api_key)).status_code == 400
        answer = client.get("/token?type=inference", headers=api_key)
        assert answer.status_code == 200, answer.text
    assert json.loads(path.read_text())["inference"]["key"] != content["inference"]["key"]
    assert json.loads(path.read_text())["management"]["key"] == content["management"]["key"]


def test_cors_preflight_and_headers() -> None:
    app = with_cors(
        ApiFilter(_echo, {"inference"}), Cors(allow_origins=["https://a.example"], allow_methods=["POST"])
    )
    with _client(app) as client:
        preflight = client.options(
            "/predictions/m",
            headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://a.example"
        simple = client.post("/predictions/m", headers={"Origin": "https://a.example"})
        assert simple.headers["access-control-allow-origin"] == "https://a.example"
        other = client.post("/predictions/m", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    assert with_cors(_echo, None) is _echo
