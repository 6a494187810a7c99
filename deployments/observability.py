"""Access log, request ids and Prometheus metrics for the inference API.

One middleware times every request, gives it an ``x-request-id`` (Ray's proxy's id when
there is one, so the access log, Ray's replica logs and the response agree), writes one
access-log line, and records prediction metrics. ``GET /metrics`` renders them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import prometheus_client
from fastapi import FastAPI, Query
from fastapi.responses import Response

from deployments.metrics import ServingMetrics
from deployments.settings import IngressArgs

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()
UNKNOWN_MODEL = "_unknown"  # 404s must not create one metric series per made-up name
logger = logging.getLogger("raytorch.access")

prometheus_client.disable_created_metrics()


class ReplicaCounts(Protocol):
    """Where the replicas-ready gauge comes from (the router's model table)."""

    def ready_replicas(self) -> dict[tuple[str, str], int]: ...


class AccessLog:
    """Writes one line per request to stdout and to ``<log_dir>/access.log``."""

    REOPEN_CHECK_S = 1.0  # notice a rotated (moved or deleted) file within a second

    def __init__(self, fmt: str, log_dir: str) -> None:
        self.fmt = fmt
        self.path: Path | None = None
        self._file: Any = None
        self._inode = 0
        self._checked_at = 0.0
        if fmt != "off":
            directory = Path(os.environ.get("RAYTORCH_LOG_DIR") or log_dir).resolve()
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "access.log"

    def _handle(self) -> Any:
        # Kept open (opening the file per request cost more than the write); reopened when
        # logrotate or an operator moved it away.
        now = time.monotonic()
        if self._file is None or now - self._checked_at > self.REOPEN_CHECK_S:
            self._checked_at = now
            try:
                current = os.stat(self.path).st_ino if self.path else 0
            except FileNotFoundError:
                current = -1
            if self._file is None or current != self._inode:
                if self._file is not None:
                    self._file.close()
                # O_APPEND with one write per line: lines of several replicas never interleave.
                self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
                self._inode = os.fstat(self._file.fileno()).st_ino
        return self._file

    def write(self, record: dict[str, Any]) -> None:
        """Format and append ``record``."""
        if self.path is None:
            return
        if self.fmt == "json":
            line = json.dumps(record, separators=(",", ":"))
        else:
            r = record
            line = (
                f'{r["time"]} {r["request_id"]} {r["client"]} "{r["method"]} {r["path"]}" {r["status"]} '
                f"{r['latency_ms']}ms model={r['model']} version={r['version']} batch={r['batch_size']}"
            )
        self._handle().write(line + "\n")
        print(line, file=sys.stdout, flush=True)


def _record(
    scope: dict[str, Any], request_id: str, status: int, seconds: float,
    model: str, version: str, batches: str,
) -> dict[str, Any]:  # fmt: skip
    client = scope.get("client")
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "client": client[0] if client else "-",
        "method": scope.get("method", "-"),
        "path": scope.get("path", "-"),
        "model": model,
        "version": version,
        "status": status,
        "latency_ms": round(seconds * 1000, 2),
        "batch_size": batches,
    }


class ObservabilityMiddleware:
    """Request id, access-log line and prediction metrics for every HTTP request.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs each request in an
    extra task with its own streams, a cost paid on every prediction. Routes leave what the
    log and metrics need in ``request.state`` (``model``, ``version``, ``answers``).
    """

    def __init__(self, app: Any, metrics: ServingMetrics, access: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == REQUEST_ID_KEY), None)
        request_id = incoming or str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not incoming:  # behind Ray's proxy the proxy adds the header itself
                    message["headers"] = [*message.get("headers", []), (REQUEST_ID_KEY, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            # Unexpected errors become a 500 further out; still leave a line for them.
            self.access.write(_record(scope, request_id, 500, time.perf_counter() - started, "-", "-", "-"))
            raise
        seconds = time.perf_counter() - started
        model = state.get("model")
        answers = state.get("answers") or []
        version = answers[0].version if answers else state.get("version") or "-"
        if model is not None:
            label = UNKNOWN_MODEL if status == 404 else model
            self.metrics.observe(label, version, status, seconds, answers)
        batches = ",".join(str(a.batch_size) for a in answers) or "-"
        self.access.write(_record(scope, request_id, status, seconds, model or "-", version, batches))


def install_observability(app: FastAPI, settings: IngressArgs, replicas: ReplicaCounts) -> ServingMetrics:
    """Add the request-id/access-log/metrics middleware and the /metrics route to ``app``."""
    metrics = ServingMetrics()
    access = AccessLog(settings.access_log, settings.log_dir)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, access=access)

    @app.get("/metrics", summary="Prometheus metrics (TorchServe's names and ours)")
    async def metrics_route(names: list[str] | None = Query(None, alias="name[]")) -> Response:  # noqa: B008
        metrics.set_replicas(replicas.ready_replicas())
        wanted = None
        if names:
            suffixes = ("", "_total", "_bucket", "_count", "_sum")
            wanted = [name + suffix for name in names for suffix in suffixes]
        return Response(metrics.render(wanted), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    return metrics
