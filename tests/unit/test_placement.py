"""GPU requests: ask Ray only for GPUs the cluster has, unless told to wait for one."""

from __future__ import annotations

from deployments.common.placement import decide_gpus
from deployments.common.settings import ResourcesConfig


def test_no_gpu_cluster_falls_back_to_cpu_and_says_so() -> None:
    decision = decide_gpus(ResourcesConfig(num_gpus=0.5), cluster_gpus=0, model="densenet161")
    assert decision.num_gpus == 0
    assert decision.note and "densenet161" in decision.note and "CPU" in decision.note


def test_gpu_cluster_gets_the_fraction() -> None:
    assert decide_gpus(ResourcesConfig(num_gpus=0.5), cluster_gpus=1, model="m").num_gpus == 0.5


def test_required_policy_keeps_the_request() -> None:
    resources = ResourcesConfig(num_gpus=1, gpu_policy="required")
    assert decide_gpus(resources, cluster_gpus=0, model="m").num_gpus == 1


def test_cpu_models_are_untouched() -> None:
    decision = decide_gpus(ResourcesConfig(), cluster_gpus=4, model="m")
    assert decision.num_gpus == 0 and decision.note is None


def test_replica_options_fixed_autoscaled_and_zero() -> None:
    from deployments.model.builder import replica_options

    assert replica_options(ResourcesConfig(num_replicas=2), 8) == {"num_replicas": 2}
    scaled = replica_options(ResourcesConfig(num_replicas=1, max_replicas=4), 8)["autoscaling_config"]
    assert (scaled["min_replicas"], scaled["max_replicas"], scaled["target_ongoing_requests"]) == (1, 4, 8)
    zero = replica_options(ResourcesConfig(num_replicas=0), 8)["autoscaling_config"]
    assert (zero["min_replicas"], zero["initial_replicas"]) == (0, 0)
