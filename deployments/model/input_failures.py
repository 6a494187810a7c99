"""What a model replica answers for one input whose decoding (or batch) raised.

A replica decodes the inputs of one Serve call side by side; an exception escaping one of them
would fail the whole call, so every batch-mate of another client would get a 500 too. Each
failure is turned into that input's own answer instead (:class:`Rejected`): the project's
errors keep their status, a ``RecursionError`` (a document nested deeper than the decoder
goes) is the client's 400, and anything else is a 500 logged here with its traceback, its
message kept out of the answer.
"""

from __future__ import annotations

import logging

from deployments.common.messages import Rejected
from handlers.errors import BadInputError, InferenceError, RaytorchError

logger = logging.getLogger("ray.serve")


def rejection(exc: Exception, model: str) -> Rejected:
    """The answer for an input whose handling raised ``exc`` (see the module docstring)."""
    if isinstance(exc, RaytorchError):
        return Rejected(exc)
    if isinstance(exc, RecursionError):
        return Rejected(BadInputError("The input is nested too deeply to decode"))
    if isinstance(exc, MemoryError):
        logger.error("Model %s ran out of memory on one input", model)
        return Rejected(InferenceError(f"Model {model} ran out of memory on this input"))
    logger.error("Model %s failed on one input", model, exc_info=exc)
    return Rejected(
        InferenceError(f"Model {model} failed on this input ({type(exc).__name__}); see the server log")
    )
