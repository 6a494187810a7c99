"""Prometheus metrics of model pools and of traffic control between versions.

Per model (the ingress hears of them in the answers of the requests that caused them): cold
loads, their time and the evictions they caused. Per pool replica (read from the replicas when
the metrics page is scraped): how many models it holds and the memory they count against its
budget. Per model with a traffic policy: each version's share of live and shadow traffic, and
how the shadow copies fared. No Ray here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from deployments.common.messages import PoolEvent
from deployments.common.model_table import ModelTable
from deployments.common.naming import parse_pooled_model_id

LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MODEL = ("model_name", "model_version", "pool")


class PoolMetrics:
    """Pool and traffic metrics, in the ingress's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.loads = Counter("raytorch_pool_loads", "Cold loads of a pooled model.", MODEL, registry=r)
        self.load_seconds = Counter(
            "raytorch_pool_load_seconds", "Summed cold-load time of a pooled model.", MODEL, registry=r
        )
        self.load_latency = Histogram(
            "raytorch_pool_load_latency_seconds", "Cold-load time of the models of a pool.", ("pool",),
            buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "raytorch_pool_evictions",
            "Evictions of a pooled model (memory budget or count).",
            MODEL,
            registry=r,
        )
        self.replicas_ready = Gauge(
            "raytorch_pool_replicas_ready", "Replicas of a pool.", ("pool",), registry=r
        )
        self.models_loaded = Gauge(
            "raytorch_pool_models_loaded", "Models a pool replica holds (hot models).", ("pool", "replica"),
            registry=r,
        )  # fmt: skip
        self.memory = Gauge(
            "raytorch_pool_memory_bytes", "Memory a pool replica's models count against its budget.",
            ("pool", "replica"), registry=r,
        )  # fmt: skip
        self.budget = Gauge(
            "raytorch_pool_memory_budget_bytes", "A pool replica's memory budget.", ("pool", "replica"),
            registry=r,
        )  # fmt: skip
        self.traffic = Gauge(
            "raytorch_traffic_percent",
            "Percent of a model's requests without a version that a version gets (kind=live) or a "
            "copy of (kind=shadow), for models with a traffic policy.",
            ("model_name", "model_version", "kind"),
            registry=r,
        )
        self.shadow_requests = Counter(
            "raytorch_shadow_requests", "Shadow copies by outcome (status code, or skipped).",
            ("model_name", "model_version", "outcome"), registry=r,
        )  # fmt: skip
        self.shadow_latency = Histogram(
            "raytorch_shadow_latency_seconds", "Latency of the shadow copies.",
            ("model_name", "model_version"), buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def observe_event(self, model: str, version: str, event: PoolEvent) -> None:
        """A cold load this request waited for, and the models it evicted."""
        if event.load_seconds is not None:
            self.loads.labels(model, version, event.pool).inc()
            self.load_seconds.labels(model, version, event.pool).inc(event.load_seconds)
            self.load_latency.labels(event.pool).observe(event.load_seconds)
        for model_id in event.evicted:
            evicted = parse_pooled_model_id(model_id)
            if evicted is not None:
                self.evictions.labels(*evicted, event.pool).inc()

    def observe_shadow(self, model: str, version: str, outcome: str, seconds: float) -> None:
        """One shadow copy's outcome ("200", another status, or "skipped")."""
        self.shadow_requests.labels(model, version, outcome).inc()
        if outcome != "skipped":
            self.shadow_latency.labels(model, version).observe(seconds)

    def set_state(self, table: ModelTable, reports: dict[str, list[dict]]) -> None:
        """Replace the gauges with the latest view: pools, their replicas, traffic policies."""
        for gauge in (self.replicas_ready, self.models_loaded, self.memory, self.budget, self.traffic):
            gauge.clear()
        for pool in table.pools.values():
            self.replicas_ready.labels(pool.name).set(pool.running_replicas)
        for pool_name, replicas in reports.items():
            for report in replicas:
                replica = str(report.get("replica", "?"))
                self.models_loaded.labels(pool_name, replica).set(len(report.get("models", ())))
                self.memory.labels(pool_name, replica).set(report.get("used_bytes", 0))
                self.budget.labels(pool_name, replica).set(report.get("budget_bytes", 0))
        for model, policy in table.traffic.items():
            default = table.default_version(model)
            live = policy.percents() if policy.split else ({default: 100.0} if default else {})
            for version, percent in live.items():
                self.traffic.labels(model, version, "live").set(percent)
            if policy.shadow:
                self.traffic.labels(model, policy.shadow, "shadow").set(policy.shadow_percent)
