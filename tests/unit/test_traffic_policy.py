"""Traffic policies: exact weighted splits, shadow percentages, versions leaving a policy."""

from __future__ import annotations

from collections import Counter

from deployments.common.routing import TrafficPolicy


def shares(policy: TrafficPolicy, requests: int, can_serve=lambda v: True) -> Counter[str]:
    return Counter(policy.choose(can_serve) for _ in range(requests))


def test_a_canary_gets_exactly_its_share_over_any_run() -> None:
    policy = TrafficPolicy((("1.0", 90), ("2.0", 10)))
    assert shares(policy, 400) == {"1.0": 360, "2.0": 40}
    # Not just on average: every 10 consecutive requests hold exactly one canary request.
    window = [policy.choose(lambda v: True) for _ in range(100)]
    assert all(window[i : i + 10].count("2.0") == 1 for i in range(0, 100, 10))


def test_weights_are_relative_and_spread_evenly() -> None:
    policy = TrafficPolicy((("a", 1), ("b", 1), ("c", 2)))
    assert shares(policy, 400) == {"a": 100, "b": 100, "c": 200}
    assert policy.percents() == {"a": 25.0, "b": 25.0, "c": 50.0}


def test_a_version_that_cannot_serve_leaves_its_share_to_the_others() -> None:
    policy = TrafficPolicy((("1.0", 90), ("2.0", 10)))
    assert shares(policy, 50, can_serve=lambda v: v != "2.0") == {"1.0": 50}
    assert policy.choose(lambda v: False) is None


def test_shadow_copies_the_given_percent_evenly() -> None:
    policy = TrafficPolicy((), "2.0", 25)
    copies = [policy.take_shadow() for _ in range(400)]
    assert copies.count(True) == 100 and copies[:4].count(True) == 1
    assert not TrafficPolicy((("1.0", 1),)).take_shadow()


def test_a_version_leaving_the_policy() -> None:
    policy = TrafficPolicy((("1.0", 80), ("2.0", 10), ("3.0", 10)), "4.0", 50)
    assert policy.without("3.0") == TrafficPolicy((("1.0", 80), ("2.0", 10)), "4.0", 50)
    assert policy.without("4.0") == TrafficPolicy((("1.0", 80), ("2.0", 10), ("3.0", 10)))
    # A split of one version routes nothing: it ends, and so does the policy without a shadow.
    assert TrafficPolicy((("1.0", 90), ("2.0", 10))).without("2.0") is None
    assert TrafficPolicy((("1.0", 90), ("2.0", 10)), "3.0", 5).without("2.0") == TrafficPolicy((), "3.0", 5)


def test_json_round_trip() -> None:
    policy = TrafficPolicy((("1.0", 9), ("2.0", 1)), "3.0", 10)
    assert policy.to_dict() == {
        "split": {"1.0": 90.0, "2.0": 10.0},
        "shadow": {"version": "3.0", "percent": 10.0},
    }
    assert TrafficPolicy.from_dict(policy.to_dict()).percents() == policy.percents()
