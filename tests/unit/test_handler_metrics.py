"""A TorchServe handler's custom metrics (``context.metrics``) reach the ingress's ``/metrics``:
the replica sends what was emitted with an answer, the ingress adds it to its registry."""

from __future__ import annotations

from deployments.common.messages import Answer
from deployments.inference.metrics import ServingMetrics
from handlers.torchserve.ts_api.metrics import Dimension, MetricTypes, ModelMetrics


def rendered(metrics: ServingMetrics) -> str:
    return metrics.render().decode()


def test_custom_metrics_appear_with_their_dimensions_and_hostname() -> None:
    emitted = ModelMetrics("mnist")
    requests = emitted.add_metric_to_cache("InferenceRequestCount", "count", [], MetricTypes.COUNTER)
    requests.add_or_update(1)
    requests.add_or_update(2)
    emitted.add_time("HandlerMethodTime", 1.5, idx=0, dimensions=[Dimension("MethodName", "preprocess")])
    emitted.add_percent("ExamplePercentMetric", 50, idx=0, metric_type=MetricTypes.HISTOGRAM)
    serving = ServingMetrics()
    serving.observe("mnist", "1.0", 200, 0.01, [Answer(3, 1, handler_metrics=tuple(emitted.drain()))], "rest")
    text, host = rendered(serving), serving.hostname
    assert f'InferenceRequestCount_total{{Hostname="{host}"}} 3.0' in text
    assert (
        f'HandlerMethodTime{{Hostname="{host}",Level="Model",MethodName="preprocess",ModelName="mnist"}} 1.5'
        in text
    )
    assert f'ExamplePercentMetric_count{{Hostname="{host}",Level="Model",ModelName="mnist"}} 1.0' in text
    # The next batch's values add up (counters) or replace (gauges).
    emitted.add_time("HandlerMethodTime", 2.5, idx=0, dimensions=[Dimension("MethodName", "preprocess")])
    requests.add_or_update(1)
    serving.observe("mnist", "1.0", 200, 0.01, [Answer(3, 1, handler_metrics=tuple(emitted.drain()))], "rest")
    text = rendered(serving)
    assert f'InferenceRequestCount_total{{Hostname="{host}"}} 4.0' in text
    assert 'MethodName="preprocess",ModelName="mnist"} 2.5' in text


def test_clashing_metrics_are_dropped_not_raised() -> None:
    emitted = ModelMetrics("m")
    emitted.add_counter("raytorch_requests", 1, idx=0)  # our own metric's name
    emitted.add_counter("Calls", 1, idx=0)
    emitted.add_metric("Calls", 5, "count", idx=0, metric_type=MetricTypes.GAUGE)  # another type
    emitted.add_counter("bad name-1", 1)
    serving = ServingMetrics()
    serving.observe("m", "1.0", 200, 0.01, [Answer(0, 1, handler_metrics=tuple(emitted.drain()))], "rest")
    text = rendered(serving)
    assert "Calls_total{" in text and "Calls{" not in text
    assert f'bad_name_1_total{{Hostname="{serving.hostname}",Level="Error"}} 1.0' in text
    assert 'raytorch_requests_total{code="200"' in text  # ours, untouched


def test_emitted_values_are_bounded_until_drained() -> None:
    from handlers.torchserve.ts_api import metrics

    emitted = ModelMetrics("m")
    for _ in range(metrics.MAX_PENDING + 5):
        emitted.add_counter("Loop", 1)
    assert len(emitted.drain()) == metrics.MAX_PENDING and emitted.dropped == 5
