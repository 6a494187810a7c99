"""Prometheus metrics of the inference API, with TorchServe's names and our own.

Recorded by the ingress, which sees every request whatever replica or node served it; the
model replicas report their per-stage timings in each answer. Rendering and filtering use
prometheus_client (``?name[]=`` as in TorchServe). No Ray here.
"""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deployments.common.messages import Answer
from deployments.inference.handler_metrics import HandlerMetrics
from deployments.inference.pool_metrics import PoolMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TS_LABELS = ("model_name", "model_version", "hostname")
LABELS = ("model_name", "model_version")


class ServingMetrics:
    """All metrics of one ingress replica, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.hostname = socket.gethostname()
        r = self.registry
        # TorchServe's metrics (its latency metrics are counters of summed microseconds).
        self.ts_requests = Counter(
            "ts_inference_requests", "Inference requests received.", TS_LABELS, registry=r
        )
        self.ts_latency = Counter(
            "ts_inference_latency_microseconds",
            "Summed inference latency (microseconds).",
            TS_LABELS,
            registry=r,
        )
        self.ts_queue = Counter(
            "ts_queue_latency_microseconds", "Summed queue latency (microseconds).", TS_LABELS, registry=r
        )
        # Ours.
        self.requests = Counter(
            "raytorch_requests",
            "Prediction requests by status code and protocol.",
            (*LABELS, "code", "protocol"),
            registry=r,
        )
        self.latency = Histogram(
            "raytorch_request_latency_seconds", "End-to-end prediction latency.", LABELS,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = Histogram(
            "raytorch_stage_latency_seconds", "Time per stage in the model replica.", (*LABELS, "stage"),
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "raytorch_batch_size",
            "Size of the batches requests ran in.",
            LABELS,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "raytorch_inflight_requests", "Predictions in progress.", ("model_name",), registry=r
        )
        self.replicas_ready = Gauge("raytorch_replicas_ready", "Replicas able to serve.", LABELS, registry=r)
        self.load_seconds = Gauge(
            "raytorch_model_load_seconds", "Model load time of a replica.", LABELS, registry=r
        )
        self.pools = PoolMetrics(r)
        self.handler_metrics = HandlerMetrics(r, self.hostname)

    def observe(
        self, model: str, version: str, code: int, seconds: float, answers: list[Answer], protocol: str
    ) -> None:
        """Record one finished prediction request (``answers`` empty when it failed)."""
        self.requests.labels(model, version, str(code), protocol).inc()
        self.ts_requests.labels(model, version, self.hostname).inc()
        self.ts_latency.labels(model, version, self.hostname).inc(seconds * 1e6)
        self.latency.labels(model, version).observe(seconds)
        for answer in answers:
            self.batch_size.labels(model, version).observe(answer.batch_size)
            for stage, value in answer.timings.items():
                self.stages.labels(model, version, stage.removesuffix("_s")).observe(value)
            if "queue_s" in answer.timings:
                self.ts_queue.labels(model, version, self.hostname).inc(answer.timings["queue_s"] * 1e6)
            if answer.load_seconds is not None:
                self.load_seconds.labels(model, version).set(answer.load_seconds)
            if answer.pool_event is not None:
                self.pools.observe_event(model, version, answer.pool_event)
            if answer.handler_metrics:
                self.handler_metrics.observe(answer.handler_metrics)

    def set_replicas(self, ready: dict[tuple[str, str], int]) -> None:
        """Replace the replicas-ready gauge with the latest view of the cluster."""
        self.replicas_ready.clear()
        for (model, version), count in ready.items():
            self.replicas_ready.labels(model, version).set(count)

    def render(self, names: list[str] | None = None) -> bytes:
        """Prometheus text format; only the named metrics when ``names`` is given."""
        registry = self.registry.restricted_registry(names) if names else self.registry
        return generate_latest(registry)
