"""``/wfpredict/{workflow}``: find the workflow's deployment, call it with a deadline, and record
metrics and access-log lines for the workflow and for each of its nodes.

Workflows are found by their deployment name (``workflow:<name>``, whatever application holds
it: a config file's or a registered ``.war``'s) in a snapshot of Serve, taken again at most once
a second when a name is missing or a call finds its application gone. Metrics are labelled only
with workflows found, so made-up names add no series.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from deployments.common.naming import parse_workflow_deployment_name
from deployments.common.workflow_answer import WorkflowAnswer, WorkflowRequest
from deployments.inference.metrics import LATENCY_BUCKETS
from deployments.inference.telemetry import RequestRecord, Telemetry
from handlers.errors import ModelNotReadyError, RaytorchError, RequestTimeoutError, WorkflowNotFoundError

SNAPSHOT_EVERY_S = 1.0


class WorkflowMetrics:
    """Per workflow and per node: requests by status code, and latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "raytorch_workflow_requests",
            "Workflow requests by status code.",
            ("workflow", "code"),
            registry=registry,
        )
        self.latency = Histogram(
            "raytorch_workflow_latency_seconds", "End-to-end workflow latency.", ("workflow",),
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.node_requests = Counter(
            "raytorch_workflow_node_requests",
            "Workflow node runs by status code (499: cancelled after another node failed).",
            ("workflow", "node", "code"),
            registry=registry,
        )
        self.node_latency = Histogram(
            "raytorch_workflow_node_latency_seconds", "Time per workflow node, its retries included.",
            ("workflow", "node"), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip


class WorkflowCalls:
    """Calls workflow deployments for the HTTP entry point."""

    def __init__(self, telemetry: Telemetry, timeout_s: float) -> None:
        self.telemetry = telemetry
        self.timeout_s = timeout_s
        self.metrics = WorkflowMetrics(telemetry.metrics.registry)
        self._where: dict[str, tuple[str, str]] = {}  # workflow -> (app, deployment)
        self._handles: dict[str, Any] = {}
        self._snapshot_at = 0.0
        self._snapshot_lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._snapshot_lock:
            if time.monotonic() - self._snapshot_at < SNAPSHOT_EVERY_S:
                return
            status = await asyncio.to_thread(serve.status)
            found = {}
            for app_name, app in status.applications.items():
                if str(getattr(app.status, "value", app.status)) == "DELETING":
                    continue
                for deployment in getattr(app, "deployments", {}):
                    name = parse_workflow_deployment_name(deployment)
                    if name is not None:
                        found[name] = (app_name, deployment)
            self._where = found
            self._handles = {k: v for k, v in self._handles.items() if k in found}
            self._snapshot_at = time.monotonic()

    async def _handle(self, name: str) -> Any:
        if name not in self._where:
            await self._refresh()
        if name not in self._where:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        if name not in self._handles:
            app_name, deployment = self._where[name]
            self._handles[name] = serve.get_deployment_handle(deployment, app_name=app_name)
        return self._handles[name]

    async def predict(
        self, record: RequestRecord, name: str, body: bytes, content_type: str | None
    ) -> WorkflowAnswer:
        """The workflow's answer (a node's failure raised as its WorkflowNodeError), recorded."""
        handle = await self._handle(name)
        status = 500
        answer: WorkflowAnswer | None = None
        try:
            answer = await self._call(name, handle, WorkflowRequest(body, content_type, record.request_id))
            status = answer.error.status if answer.error is not None else 200
        except RaytorchError as exc:
            status = exc.status
            raise
        finally:
            self._record(record, name, status, answer)
        if answer.error is not None:
            raise answer.error
        return answer

    async def _call(self, name: str, handle: Any, request: WorkflowRequest) -> WorkflowAnswer:
        response = handle.run.remote(request)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeoutError(
                f'Workflow "{name}" did not answer within {self.timeout_s:g}s'
            ) from None
        except BackPressureError:
            raise ModelNotReadyError(
                f'Workflow "{name}" is overloaded. Retry later.', retry_after_s=1
            ) from None
        except (RayActorError, DeploymentUnavailableError, RayServeException) as exc:
            self._where.pop(name, None)  # look it up again next time: it may be gone or moved
            self._handles.pop(name, None)
            raise ModelNotReadyError(f'Workflow "{name}" is unavailable: {exc}', retry_after_s=2) from None
        except Exception as exc:
            cause = getattr(exc, "cause", None)  # a RayTaskError around one of ours
            if isinstance(cause, RaytorchError):
                raise cause from None
            raise

    def _record(self, record: RequestRecord, name: str, status: int, answer: WorkflowAnswer | None) -> None:
        seconds = time.perf_counter() - record.started
        self.metrics.requests.labels(name, str(status)).inc()
        self.metrics.latency.labels(name).observe(seconds)
        for report in answer.reports if answer is not None else []:
            self.metrics.node_requests.labels(name, report.node, str(report.status)).inc()
            self.metrics.node_latency.labels(name, report.node).observe(report.seconds)
            if report.model is not None and report.status != 499:
                # The model node's request also counts as one of its model's (protocol "workflow").
                version = report.answer.version if report.answer is not None else "-"
                answers = [report.answer] if report.answer is not None else []
                self.telemetry.metrics.observe(
                    report.model, version, report.status, report.seconds, answers, "workflow"
                )
            self.telemetry.access.write(
                {
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "request_id": record.request_id,
                    "client": record.client,
                    "method": "NODE",
                    "path": f"/wfpredict/{name}/{report.node}",
                    "protocol": "workflow",
                    "model": report.model or "-",
                    "version": "-",
                    "status": report.status,
                    "latency_ms": round(report.seconds * 1000, 2),
                    "batch_size": "-",
                }
            )
