"""The routing feed: ingresses get only the models changed since their version, else everything."""

from __future__ import annotations

from deployments.management.routing_feed import RoutingFeed


def test_an_ingress_gets_the_models_changed_since_its_version() -> None:
    feed = RoutingFeed()
    assert feed.changes_since(-1, "") == (None, True)  # a new ingress: everything
    start = feed.version
    feed.announce(["a"], serve=False)
    feed.announce(["b", "c"], serve=False)
    assert feed.changes_since(start, feed.epoch) == ({"a", "b", "c"}, False)
    assert feed.changes_since(start + 1, feed.epoch) == ({"b", "c"}, False)
    assert feed.changes_since(feed.version, feed.epoch) == (set(), False)
    feed.announce()  # a Serve application changed: everything, and a new snapshot
    assert feed.changes_since(start + 1, feed.epoch) == (None, True)


def test_a_restarted_management_part_or_a_lagging_ingress_gets_everything() -> None:
    feed = RoutingFeed(log_limit=5)
    start = feed.version
    assert feed.changes_since(start, "another epoch") == (None, True)
    for name in "abcdefgh":
        feed.announce([name], serve=False)
    assert feed.changes_since(start, feed.epoch) == (None, True)  # older changes were forgotten
    assert feed.changes_since(feed.version - 3, feed.epoch) == ({"f", "g", "h"}, False)
