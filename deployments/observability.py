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
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from deployments.metrics import ServingMetrics
from deployments.settings import IngressArgs

REQUEST_ID_HEADER = "x-request-id"
UNKNOWN_MODEL = "_unknown"  # 404s must not create one metric series per made-up name
logger = logging.getLogger("raytorch.access")

prometheus_client.disable_created_metrics()


class ReplicaCounts(Protocol):
    """Where the replicas-ready gauge comes from (the router's model table)."""

    def ready_replicas(self) -> dict[tuple[str, str], int]: ...


class AccessLog:
    """Writes one line per request to stdout and to ``<log_dir>/access.log``."""

    def __init__(self, fmt: str, log_dir: str) -> None:
        self.fmt = fmt
        self.path: Path | None = None
        if fmt != "off":
            directory = Path(os.environ.get("RAYTORCH_LOG_DIR") or log_dir).resolve()
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "access.log"

    def write(self, record: dict[str, Any]) -> None:
        """Format and append ``record``; a short line appended with O_APPEND stays whole."""
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
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        print(line, file=sys.stdout, flush=True)


def _record(
    request: Request, request_id: str, status: int, seconds: float, model: str, version: str, batches: str
) -> dict[str, Any]:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "client": request.client.host if request.client else "-",
        "method": request.method,
        "path": request.url.path,
        "model": model,
        "version": version,
        "status": status,
        "latency_ms": round(seconds * 1000, 2),
        "batch_size": batches,
    }


def install_observability(app: FastAPI, settings: IngressArgs, replicas: ReplicaCounts) -> ServingMetrics:
    """Add the request-id/access-log/metrics middleware and the /metrics route to ``app``."""
    metrics = ServingMetrics()
    access = AccessLog(settings.access_log, settings.log_dir)

    @app.middleware("http")
    async def _observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER)
        request_id = incoming or str(uuid.uuid4())
        request.state.request_id = request_id
        try:
            response = await call_next(request)
        except Exception:
            # Unexpected errors become a 500 further out; still leave a line for them.
            access.write(_record(request, request_id, 500, time.perf_counter() - started, "-", "-", "-"))
            raise
        if not incoming:  # behind Ray's proxy the proxy adds the header itself
            response.headers[REQUEST_ID_HEADER] = request_id
        seconds = time.perf_counter() - started
        model = getattr(request.state, "model", None)
        answers = getattr(request.state, "answers", [])
        version = answers[0].version if answers else getattr(request.state, "version", None) or "-"
        if model is not None:
            label = UNKNOWN_MODEL if response.status_code == 404 else model
            metrics.observe(label, version, response.status_code, seconds, answers)
        batches = ",".join(str(a.batch_size) for a in answers) or "-"
        access.write(
            _record(request, request_id, response.status_code, seconds, model or "-", version, batches)
        )
        return response

    @app.get("/metrics", summary="Prometheus metrics (TorchServe's names and ours)")
    async def metrics_route(names: list[str] | None = Query(None, alias="name[]")) -> Response:  # noqa: B008
        metrics.set_replicas(replicas.ready_replicas())
        wanted = None
        if names:
            suffixes = ("", "_total", "_bucket", "_count", "_sum")
            wanted = [name + suffix for name in names for suffix in suffixes]
        return Response(metrics.render(wanted), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    return metrics
