"""What every request leaves behind: Prometheus metrics and an access-log line.

Each protocol's entry point (HTTP, and gRPC) makes one :meth:`Telemetry.finish` call per
request with its :class:`RequestRecord`; the shared prediction code fills in the model, version
and answers, naming only versions the router knows (so made-up names cannot add metric
series). Request ids: a client's ``x-request-id`` is kept when it is a plain token, else
replaced, so it can go into logs and headers as it is.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import prometheus_client

from deployments.common.messages import Answer
from deployments.inference.access_log import AccessLog
from deployments.inference.metrics import ServingMetrics

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
RECORD_KEY = "raytorch.record"  # where the ASGI scope carries the request's record

prometheus_client.disable_created_metrics()


def request_id_from(incoming: str | None) -> str:
    """The client's request id when it is a safe token, else a new one."""
    if incoming and REQUEST_ID_PATTERN.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())


@dataclass
class RequestRecord:
    """One request as telemetry sees it. ``model`` stays None for requests that are not
    predictions (they get an access-log line but no prediction metrics)."""

    request_id: str
    method: str
    path: str
    client: str
    protocol: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    version: str | None = None
    answers: list[Answer] = field(default_factory=list)


class Telemetry:
    """The ingress replica's metrics registry and access log."""

    def __init__(self, access_log: str, log_dir: str, console: bool = True) -> None:
        self.metrics = ServingMetrics()
        self.access = AccessLog(access_log, log_dir, console)

    def finish(self, record: RequestRecord, status: int) -> None:
        """Record a finished request: prediction metrics (when it was one) and its log line."""
        seconds = time.perf_counter() - record.started
        version = record.version or "-"
        if record.model is not None:
            self.metrics.observe(record.model, version, status, seconds, record.answers, record.protocol)
        self.access.write(
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": record.request_id,
                "client": record.client,
                "method": record.method,
                "path": record.path,
                "protocol": record.protocol,
                "model": record.model or "-",
                "version": version,
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
                "batch_size": ",".join(str(a.batch_size) for a in record.answers) or "-",
            }
        )


def record_of(scope: dict) -> RequestRecord:
    """The telemetry record the entry point opened for this request (ASGI ``scope``)."""
    return scope[RECORD_KEY]
