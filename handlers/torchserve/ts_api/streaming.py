"""``ts.handler_utils.utils`` and ``ts.protocol.otf_message_handler``: partial answers.

A TorchServe handler streams by calling ``send_intermediate_predict_response(ret, req_id_map,
message, code, context)`` for each partial answer (``ret``: one value per request of the
batch) and returning the last one. Here the call hands each value to the context, which
passes it on at once when the client streams (``Context.stream_to``) or keeps it to be joined
with the final answer when the client asked for the whole answer.
"""

from __future__ import annotations

from typing import Any


def send_intermediate_predict_response(
    ret: list[Any], req_id_map: dict[int, str] | None, message: str, code: int, context: Any
) -> None:
    """Send ``ret[i]`` as a partial answer to request ``i`` of the batch (each ``i`` of
    ``req_id_map``, or every entry of ``ret`` without one). ``message`` and ``code`` are
    TorchServe's per-message status; a failure is raised by the handler instead."""
    if ret is None:
        return
    indices = list(req_id_map) if req_id_map else range(len(ret))
    for index in indices:
        # TorchServe's own Context (its package installed) has no send_intermediate: the
        # adapter gives every context stream_to and intermediate.
        stream_to = getattr(context, "stream_to", None)
        if stream_to is not None:
            stream_to(ret[int(index)])
        else:
            context.intermediate.setdefault(int(index), []).append(ret[int(index)])


def redirect_torchserve_streaming() -> None:
    """Point TorchServe's own ``send_intermediate_predict_response`` (its package installed)
    at this one: it writes to TorchServe's frontend socket, which a handler here never has.
    Called before a handler file is imported, since handler files import the name itself."""
    import importlib

    for name in ("ts.handler_utils.utils", "ts.protocol.otf_message_handler"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # an older TorchServe without one of them
            continue
        module.send_intermediate_predict_response = send_intermediate_predict_response  # type: ignore[attr-defined]
