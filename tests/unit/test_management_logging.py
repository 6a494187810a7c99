"""The management replica does not log the ingresses' once-a-second routing polls."""

from __future__ import annotations

import logging

from deployments.management.deployment import QuietPolling


def _record(message: str, access_log: bool | None) -> logging.LogRecord:
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, message, None, None)
    if access_log is not None:
        record.serve_access_log = access_log
    return record


def test_routing_polls_are_dropped_and_everything_else_kept() -> None:
    quiet = QuietPolling()
    assert not quiet.filter(_record("CALL routing_changes OK 1.2ms", True))
    assert quiet.filter(_record("CALL token OK 0.9ms", True))  # once per ingress: kept
    assert quiet.filter(_record("POST /models 200 5083.6ms", True))
    assert quiet.filter(_record("CALL routing_changes OK 1.2ms", None))  # not an access-log record
    assert quiet.filter(_record("Management API ready: state dir /x", None))
