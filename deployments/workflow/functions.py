"""A workflow's function nodes: the functions of its handler file, called TorchServe's way. No Ray.

TorchServe runs each function ``f(data, context)`` as a model of its own, with ``data`` a list
of request dicts (one per request of the batch; one here) and the answer a list with one item
per request. The item goes to the next node as TorchServe's worker encodes answers: bytes as
they are, ``str`` as UTF-8, a tensor through ``torch.save``, anything else as JSON.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployments.common.workflow_dag import NodeCall, NodeInput, Payload
from handlers.errors import HandlerStatusError, InferenceError, ModelLoadError
from handlers.torchserve.form_fields import request_value

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"
TENSOR = "application/x-torch-tensor"  # torch.save bytes, what TorchServe sends for a tensor
SERVER_VERSION = "raytorch"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def encode_output(value: Any) -> Payload:
    """One answer item as bytes, the way TorchServe's worker sends it to the next node."""
    if isinstance(value, bytes | bytearray):
        return Payload(bytes(value), OCTETS)
    if isinstance(value, str):
        return Payload(value.encode("utf-8"), TEXT)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(value, buffer)
        return Payload(buffer.getvalue(), TENSOR)
    try:
        return Payload(json.dumps(value).encode("utf-8"), JSON)
    except (TypeError, ValueError) as exc:
        raise InferenceError(f"its answer cannot be sent on: {exc}") from None


def request_dict(given: NodeInput) -> dict[str, Any]:
    """TorchServe's request dict of one node input: each parameter decoded by its media type;
    a raw body is both ``body`` and ``data``, as raytorch's TorchServe handlers get it."""
    row = {name: request_value(p.data, p.content_type) for name, p in given.items()}
    if "body" in row and "data" not in row:
        row["data"] = row["body"]
    return row


def load_functions(handler: str, names: list[str]) -> dict[str, Callable[..., Any]]:
    """The named functions of ``handler``: a ``.py`` file (its folder goes on ``sys.path``, as
    TorchServe's worker does) or a module's import path. ModelLoadError naming what is missing."""
    from handlers.loading import load_module_file  # imports torch: only in workflow replicas

    try:
        if handler.endswith(".py"):
            path = handler_path(handler)
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            module: Any = load_module_file(path)
        else:
            module = importlib.import_module(handler)
    except Exception as exc:  # user code may raise anything while importing
        raise ModelLoadError(
            f"Workflow handler {handler} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [name for name in names if not callable(getattr(module, name, None))]
    if missing:
        raise ModelLoadError(f"Workflow handler {handler} defines no function {', '.join(missing)}")
    return {name: getattr(module, name) for name in names}


def handler_path(handler: str) -> Path:
    """A handler file's path: absolute, or relative to the working directory, or else to the
    project's root (a config's ``examples/...``, whatever directory Ray started the replica in)."""
    path = Path(handler).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (PROJECT_ROOT / path).resolve()


def function_context(workflow: str, node: str, folder: str) -> Any:
    """A TorchServe ``Context`` for a function node (TorchServe's, or raytorch's ``ts`` API)."""
    from handlers.torchserve import ts_api

    ts_api.install()
    from ts.context import Context

    from handlers.torchserve.ts_api.context import NullMetrics

    return Context(f"{workflow}__{node}", folder, {}, 1, None, SERVER_VERSION, metrics=NullMetrics())


def initialize(name: str, function: Callable[..., Any], context: Any) -> None:
    """Call ``function(None, context)`` once, as TorchServe's worker starts a function node (its
    handler files guard for it: ``if data is None: return``); ModelLoadError if it raises."""
    try:
        function(None, context)
    except Exception as exc:
        raise ModelLoadError(
            f"Workflow function {name} failed to initialize: {type(exc).__name__}: {exc}"
        ) from exc


def function_call(function: Callable[..., Any], context: Any) -> NodeCall:
    """A node call that runs ``function([request], context)`` on a thread and encodes its one answer."""

    def run(given: NodeInput) -> Payload:
        try:
            answer = function([request_dict(given)], context)
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            if type(exc).__name__ == "PredictionException" and isinstance(code, int):
                raise HandlerStatusError(str(getattr(exc, "message", exc)), code) from None
            raise InferenceError(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(answer, list | tuple) or len(answer) != 1:
            kind = f"a list of {len(answer)}" if isinstance(answer, list | tuple) else type(answer).__name__
            raise InferenceError(f"it must answer a list with one item per request (one), not {kind}")
        return encode_output(answer[0])

    async def call(given: NodeInput) -> Payload:
        return await asyncio.to_thread(run, given)

    return call
