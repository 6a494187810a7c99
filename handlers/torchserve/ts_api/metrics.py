"""``ts.metrics``: TorchServe's custom metrics API (``context.metrics``), Ray-free.

A handler adds metrics (``add_counter``, ``add_time``, ``add_size``, ``add_percent``,
``add_metric``, ``add_metric_to_cache`` then ``Metric.add_or_update``) as on TorchServe, with
its default dimensions (``ModelName`` and ``Level``). :class:`ModelMetrics` keeps what was
emitted as plain :class:`MetricRecord` values until the serving side takes them
(:meth:`ModelMetrics.drain`); raytorch's own request, queue and inference metrics are
recorded for every model anyway. Metric types are compared by value, so TorchServe's own
``MetricTypes`` enum works too.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Any

# A handler emitting in a loop must not grow the replica's memory until the next drain.
MAX_PENDING = 10_000


class MetricTypes(enum.Enum):
    """The kinds of metric a handler can emit."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """One dimension (label) of a metric: a name and its value."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"Name": self.name, "Value": self.value}


@dataclass(frozen=True)
class MetricRecord:
    """One emitted value: counters add it, gauges take it, histograms observe it."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    unit: str
    dimensions: tuple[tuple[str, str], ...]
    value: float


def _kind(metric_type: Any) -> str:
    kind = str(getattr(metric_type, "value", metric_type)).lower()
    if kind not in ("counter", "gauge", "histogram"):
        raise ValueError(f"Unknown metric type {metric_type!r}: use MetricTypes.COUNTER, GAUGE or HISTOGRAM")
    return kind


class Metric:
    """A metric in the cache: ``add_or_update`` emits one value for the given dimension values."""

    def __init__(
        self, name: str, unit: str, dimension_names: list[str] | None, kind: str, sink: ModelMetrics
    ) -> None:
        self.metric_name, self.unit, self.metric_type = name, unit, kind
        self.dimension_names = list(dimension_names) if dimension_names is not None else None
        self._sink = sink

    def add_or_update(
        self, value: float, dimension_values: list[str] | None = None, request_id: str = ""
    ) -> None:
        values = [str(v) for v in (dimension_values or [])]
        names = self.dimension_names
        if names is None:  # fetched with get_metric before anyone declared it: TorchServe's defaults
            names = ["ModelName", "Level"][: len(values)] + [f"Dimension{i}" for i in range(2, len(values))]
        if len(names) != len(values):
            raise ValueError(
                f"Metric {self.metric_name} has dimensions {names}, got {len(values)} values: {values}"
            )
        self._sink.emit(
            MetricRecord(
                self.metric_name,
                self.metric_type,
                self.unit,
                tuple(zip(names, values, strict=True)),
                float(value),
            )
        )

    def update(self, value: float, dimension_values: list[str] | None = None, request_id: str = "") -> None:
        self.add_or_update(value, dimension_values, request_id)


class ModelMetrics:
    """``context.metrics`` of one model: TorchServe's metric cache, collecting what is emitted."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.request_ids: Any = None
        self._cache: dict[tuple[str, str], Metric] = {}
        self._pending: list[MetricRecord] = []
        self.dropped = 0
        self._lock = threading.Lock()

    # -- the cache ------------------------------------------------------------------------------
    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: list[str] | None = None,
        metric_type: Any = MetricTypes.COUNTER,
    ) -> Metric:
        """Declare (or redeclare) a metric without emitting it."""
        kind = _kind(metric_type)
        metric = Metric(metric_name, unit, list(dimension_names or []), kind, self)
        self._cache[(kind, metric_name)] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: Any = MetricTypes.COUNTER) -> Metric:
        """A declared metric. TorchServe declares the server's metrics.yaml ones up front; here a
        metric not declared yet is created, its dimensions named TorchServe's defaults."""
        kind = _kind(metric_type)
        if (kind, metric_name) not in self._cache:
            self._cache[(kind, metric_name)] = Metric(metric_name, "", None, kind, self)
        return self._cache[(kind, metric_name)]

    def set_request_ids(self, request_ids: Any) -> None:
        self.request_ids = request_ids

    # -- emitting -------------------------------------------------------------------------------
    def _default_dims(self, idx: int | None, dimensions: list[Any] | None) -> list[Any]:
        # TorchServe's rule: without a request index the level is "Error", else the model's.
        dims = list(dimensions or [])
        names = {d.name for d in dims}
        if idx is not None and "ModelName" not in names:
            dims.append(Dimension("ModelName", self.model_name))
        if "Level" not in names:
            dims.append(Dimension("Level", "Model" if idx is not None else "Error"))
        return dims

    def _emit(
        self, name: str, value: float, unit: str, idx: int | None, dimensions: Any, metric_type: Any
    ) -> None:
        dims = self._default_dims(idx, dimensions)
        kind = _kind(metric_type)
        metric = self._cache.get((kind, name))
        if metric is None or metric.dimension_names != [d.name for d in dims]:
            metric = self.add_metric_to_cache(name, unit, [d.name for d in dims], kind)
        metric.add_or_update(value, [d.value for d in dims])

    def add_metric(
        self, name: str, value: float, unit: str = "", idx: int | None = None,
        dimensions: list[Any] | None = None, metric_type: Any = MetricTypes.COUNTER,
    ) -> None:  # fmt: skip
        """Emit ``value`` for metric ``name`` of any type."""
        self._emit(name, value, unit, idx, dimensions, metric_type)

    def add_counter(
        self, name: str, value: float, idx: int | None = None, dimensions: list[Any] | None = None
    ) -> None:
        """Add ``value`` to counter ``name``."""
        self._emit(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(
        self, name: str, value: float, idx: int | None = None, unit: str = "ms",
        dimensions: list[Any] | None = None, metric_type: Any = MetricTypes.GAUGE,
    ) -> None:  # fmt: skip
        """A duration (``ms``, ``s``, ``us`` or ``ns``)."""
        if unit not in ("ms", "s", "us", "ns"):
            raise ValueError(f"Time metric {name}: the unit must be ms, s, us or ns, not {unit!r}")
        self._emit(name, value, unit, idx, dimensions, metric_type)

    def add_size(
        self, name: str, value: float, idx: int | None = None, unit: str = "MB",
        dimensions: list[Any] | None = None, metric_type: Any = MetricTypes.GAUGE,
    ) -> None:  # fmt: skip
        """A size (``MB``, ``kB``, ``GB`` or ``B``)."""
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError(f"Size metric {name}: the unit must be MB, kB, GB or B, not {unit!r}")
        self._emit(name, value, unit, idx, dimensions, metric_type)

    def add_percent(
        self, name: str, value: float, idx: int | None = None,
        dimensions: list[Any] | None = None, metric_type: Any = MetricTypes.GAUGE,
    ) -> None:  # fmt: skip
        """A percentage."""
        self._emit(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: float, dimensions: list[Any] | None = None) -> None:
        """Count an error."""
        self._emit(name, value, "", None, dimensions, MetricTypes.COUNTER)

    def emit(self, record: MetricRecord) -> None:
        """Keep one emitted value until :meth:`drain` (beyond MAX_PENDING, count it as dropped)."""
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(record)
            else:
                self.dropped += 1

    def drain(self) -> list[MetricRecord]:
        """What was emitted since the last call, oldest first."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending
