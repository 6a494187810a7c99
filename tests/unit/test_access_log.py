"""The access log: a client cannot forge lines or fields, the file rotates, and lines are
written by a listener thread, never on the event loop."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deployments.common.settings import IngressArgs
from deployments.inference import access_log
from deployments.inference.access_log import AccessLog, format_line
from deployments.inference.telemetry import request_id_from
from handlers.handler_catalog import create_handler
from tests.fixtures.inference import LocalRouter, inference_app
from tests.fixtures.specs import tiny_spec

FORGED_ID = 'abc" 200 0ms model=admin'


def record(**overrides: object) -> dict:
    base = {
        "time": "2026-11-30T12:00:00.000+00:00", "request_id": "r1", "client": "127.0.0.1",
        "method": "POST", "path": "/predictions/m", "protocol": "torchserve", "model": "m",
        "version": "1.0", "status": 200, "latency_ms": 1.5, "batch_size": "1",
    }  # fmt: skip
    return {**base, **overrides}


@pytest.mark.parametrize("given", [FORGED_ID, "a\nb", "x" * 129, "", "id with spaces", "é"])
def test_unsafe_request_ids_are_replaced(given: str) -> None:
    replaced = request_id_from(given)
    assert replaced != given and uuid.UUID(replaced)


def test_plain_request_ids_are_kept() -> None:
    assert request_id_from("trace-42:abc.DEF_1") == "trace-42:abc.DEF_1"


def test_a_crafted_path_stays_inside_its_quoted_field() -> None:
    path = '/predictions/m" 200 0ms model=admin\n2026-01-01 "forged'
    line = format_line(record(path=path), "text")
    assert "\n" not in line
    request_line = line.split(" ", 3)[3].rsplit(" 200 1.5ms", 1)[0]
    assert json.loads(request_line) == f"POST {path}"  # one JSON string, the whole path in it
    assert json.loads(format_line(record(path=path), "json"))["path"] == path


def test_the_app_logs_and_echoes_only_safe_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    handler = create_handler(tiny_spec())
    app = inference_app(LocalRouter({"tiny": handler}), IngressArgs(access_log="text"))
    response = TestClient(app).get("/predictions/%22x%0Ay", headers={"x-request-id": FORGED_ID})
    assert response.headers["x-request-id"] != FORGED_ID
    app.telemetry.access.flush()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 1 and "model=admin" not in lines[0]
    assert json.dumps(response.headers["x-request-id"]) in lines[0]
    app.telemetry.access.close()


def test_the_file_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "MAX_BYTES", 2000)
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    log = AccessLog("json", str(tmp_path))
    for i in range(100):
        log.write(record(request_id=f"r{i}"))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[:2] == ["access.log", "access.log.1"] and len(files) <= 1 + access_log.BACKUPS
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())


def test_lines_are_written_off_the_calling_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writers: list[str] = []
    emit = access_log.logging.handlers.RotatingFileHandler.emit

    def recording(self, entry) -> None:  # type: ignore[no-untyped-def]
        writers.append(threading.current_thread().name)
        emit(self, entry)

    monkeypatch.setattr(access_log.logging.handlers.RotatingFileHandler, "emit", recording)
    monkeypatch.setenv("RAYTORCH_LOG_DIR", str(tmp_path))
    log = AccessLog("text", str(tmp_path))
    log.write(record())
    log.close()
    assert writers and threading.current_thread().name not in writers
