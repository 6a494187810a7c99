"""Prometheus metrics that TorchServe handler files emit through ``context.metrics``.

A model replica collects what its handler emitted (``handlers.torchserve.ts_api.metrics``) and
sends it with the first answer of the next batch (``Answer.handler_metrics``); the ingress adds
it to its registry here, so custom metrics appear on ``/metrics`` beside ours. Each metric
keeps the name the handler gave it and its dimensions as labels, plus ``Hostname`` as on
TorchServe; counters are exported with Prometheus's ``_total`` suffix. A name that clashes
with another metric (ours, or the same name with other dimensions or type) is dropped with
one warning. No Ray here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger("ray.serve")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


def prometheus_name(name: str) -> str:
    """``name`` with characters Prometheus does not allow replaced by ``_``."""
    cleaned = _INVALID.sub("_", name) or "_"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


class HandlerMetrics:
    """Handler-emitted metrics, created in the ingress's registry on first sight."""

    def __init__(self, registry: CollectorRegistry, hostname: str) -> None:
        self.registry = registry
        self.hostname = hostname
        self._metrics: dict[str, tuple[str, tuple[str, ...], Any]] = {}
        self._refused: set[str] = set()

    def _metric(self, name: str, kind: str, labels: tuple[str, ...]) -> Any:
        known = self._metrics.get(name)
        if known is not None:
            return known[2] if known[:2] == (kind, labels) else None
        if name in self._refused or kind not in KINDS:
            return None
        try:
            metric = KINDS[kind](name, f"Emitted by a handler ({kind}).", labels, registry=self.registry)
        except ValueError as exc:  # the name is taken by one of our metrics
            self._refused.add(name)
            logger.warning("Handler metric %s is dropped: %s", name, exc)
            return None
        self._metrics[name] = (kind, labels, metric)
        return metric

    def observe(self, records: Iterable[Any]) -> None:
        """Add a replica's emitted values: counters add, gauges take, histograms observe."""
        for record in records:
            labels = (*(prometheus_name(n) for n, _ in record.dimensions), "Hostname")
            if len(set(labels)) != len(labels):
                continue  # a dimension named twice cannot be a label set
            metric = self._metric(prometheus_name(record.name), record.kind, labels)
            if metric is None:
                if record.name not in self._refused:
                    self._refused.add(record.name)
                    logger.warning(
                        "Handler metric %s is dropped: its type or dimensions changed", record.name
                    )
                continue
            child = metric.labels(*[v for _, v in record.dimensions], self.hostname)
            if record.kind == "counter":
                if record.value >= 0:  # Prometheus counters only go up
                    child.inc(record.value)
            elif record.kind == "gauge":
                child.set(record.value)
            else:
                child.observe(record.value)
