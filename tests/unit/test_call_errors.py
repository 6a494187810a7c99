"""The one map from what a Serve call raises, and from bugs, to what a client sees
(deployments/common/http_errors.py): each Ray fault gets its status and Retry-After, our own
error raised in a replica comes back as itself, and a bug is a 500 naming the request id,
never its text."""

from __future__ import annotations

import logging

import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments.common.http_errors import call_error, replica_lost, unexpected_error
from handlers.errors import BadInputError, RaytorchError


@pytest.mark.parametrize(
    ("exc", "fragment", "retry_after", "lost"),
    [
        (BackPressureError(num_queued_requests=2, max_queued_requests=2), "overloaded", "1", False),
        (ActorDiedError(), "lost the replica", "2", True),
        (DeploymentUnavailableError("model:m@1"), "unavailable", "5", True),
    ],
)
def test_each_ray_fault_is_a_503_with_its_retry_after(
    exc: Exception, fragment: str, retry_after: str, lost: bool
) -> None:
    error = call_error(exc, 'Model "m"')
    assert error is not None and error.status == 503
    assert error.message.startswith('Model "m"') and fragment in error.message
    assert error.headers() == {"Retry-After": retry_after}
    assert replica_lost(exc) is lost  # only a lost replica makes the routing table stale


def test_our_error_raised_in_a_replica_comes_back_as_itself() -> None:
    ours = BadInputError("not an image")
    wrapped = RayTaskError("predict_many", "traceback", ours)
    assert call_error(wrapped, 'Model "m"') is ours


def test_anything_else_is_not_mapped_but_left_to_the_bug_answer() -> None:
    assert call_error(ValueError("boom"), 'Model "m"') is None
    assert not replica_lost(ValueError("boom"))


def test_a_bug_is_a_500_naming_the_request_id_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="raytorch.http"):
        error = unexpected_error(ValueError("secret internals"), "POST /x", "req-7")
    assert type(error) is RaytorchError and error.status == 500
    assert "req-7" in error.message and "secret" not in error.message
    assert "req-7" in caplog.text and "secret internals" in caplog.text  # the log has the cause


def test_our_errors_pass_through_the_bug_answer_unchanged() -> None:
    ours = BadInputError("bad")
    assert unexpected_error(ours, "POST /x", "req-8") is ours
