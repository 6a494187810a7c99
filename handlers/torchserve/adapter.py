"""Run a TorchServe handler file as a raytorch handler (``handler: torchserve:<file>[:<fn>]``).

Loading follows TorchServe's worker: the file and its neighbours import each other by name
(each archive's own modules, see :mod:`handlers.archive_imports`), the file's
function entry point (``handle`` or the one named) is called once with no data, or else its one
class is built and ``initialize(context)`` loads the model. Requests become TorchServe's request
dicts (``{"data": ..., "body": ...}``, JSON decoded, text as ``str``, other bodies as
``bytearray``).

A handler that keeps TorchServe's own ``handle`` gets raytorch's per-request checking: its
``preprocess`` runs on each request alone before batching, so a bad input gets its own 400
and its batch-mates still succeed; the batch is the requests' tensors joined, then its
``inference`` and ``postprocess``. A handler with its own ``handle`` (or a function entry
point) gets the whole batch at once, as on TorchServe. ``PredictionException(message,
error_code)`` answers with that status.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from handlers.archive import MAR_MANIFEST
from handlers.archive_imports import archive_modules
from handlers.base import BaseHandler
from handlers.errors import (
    BadInputError,
    ConfigError,
    HandlerStatusError,
    InferenceError,
    ModelLoadError,
    NotImplementedFeatureError,
    RaytorchError,
    StreamCancelled,
)
from handlers.explain import ExplainRequest, heatmap_png
from handlers.spec import ModelSpec
from handlers.torchserve import ts_api
from handlers.torchserve.form_fields import decode_form, request_value
from handlers.torchserve.names import default_handler_class, parse_torchserve_ref
from handlers.torchserve.ts_api.metrics import ModelMetrics
from handlers.torchserve.ts_api.streaming import redirect_torchserve_streaming
from handlers.torchserve.ts_api.util import list_classes_from_module

logger = logging.getLogger("raytorch.handlers")
SERVER_VERSION = "raytorch"


@dataclass
class TorchServeRequest:
    """One request as the handler sees it, and its preprocessed tensor (per-request mode)."""

    row: dict[str, Any]
    headers: dict[str, str]
    tensor: Any = None


@dataclass
class OneByOne:
    """Preprocessed requests that do not join into one tensor (a text classifier's
    ``(tensor, text)``, differently sized images): each runs through ``inference`` and
    ``postprocess`` alone, as on TorchServe with its default batch size of 1."""

    values: list[Any]


def request_row(data: bytes, content_type: str | None) -> dict[str, Any]:
    """TorchServe's request dict. A multipart body (a workflow node with several parents, see
    handlers/torchserve/form_fields.py) gives one entry per field, named by the field."""
    if (content_type or "").lower().startswith("multipart/form-data"):
        fields = decode_form(data, content_type or "")
        if fields:
            return {name: request_value(value, kind) for name, (value, kind) in fields.items()}
    value = request_value(data, content_type)
    # TorchServe names a raw body "body" and a multipart field by its name ("data").
    return {"data": value, "body": value}


def _status_of(exc: BaseException) -> int | None:
    """The status a handler's PredictionException (TorchServe's or ours) asks for."""
    code = getattr(exc, "error_code", None)
    return code if type(exc).__name__ == "PredictionException" and isinstance(code, int) else None


class TorchServeHandler(BaseHandler):
    """A TorchServe handler file behind raytorch's handler lifecycle (see the module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.file, self.function = parse_torchserve_ref(spec.handler)
        self.api = ""
        self.service: Any = None
        self.entry: Callable[..., Any] | None = None
        self.context: Any = None
        self.per_request = False
        # context.metrics: the handler's custom metrics (TorchServe's API), kept until drained.
        self.metrics = ModelMetrics(spec.name)

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> None:
        started = time.perf_counter()
        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        self.api = ts_api.install()
        if self.api == "torchserve":
            redirect_torchserve_streaming()
        folder = Path(self.spec.base_dir or ".").resolve()
        # As on TorchServe's worker, handler and model files import their neighbours by name,
        # but each archive gets its own (handlers.archive_imports): a pool runs many archives.
        archive = archive_modules(folder)
        default = default_handler_class(self.file)  # a .mar naming TorchServe's default handler
        with archive.plain_names():
            try:
                module = (
                    importlib.import_module(default[0]) if default else archive.load_file(folder / self.file)
                )
            except Exception as exc:  # user code may raise anything while importing
                raise ModelLoadError(
                    f"Handler {self.file} cannot be imported: {type(exc).__name__}: {exc}"
                ) from exc
            self.context = self._context(folder)
            try:
                self._start(module, default[1] if default else None)
            except RaytorchError:
                raise
            except Exception as exc:
                raise ModelLoadError(
                    f"Handler {self.file} failed to initialize: {type(exc).__name__}: {exc}"
                ) from exc
        self.device = getattr(self.service, "device", None) or torch.device("cpu")
        self.model = getattr(self.service, "model", None)
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "Loaded TorchServe handler %s of model %s version %s on %s in %.2fs (ts API: %s, %s)",
            self.file,
            self.spec.name,
            self.spec.version,
            self.device,
            self.load_seconds,
            self.api,
            "per-request preprocess" if self.per_request else "whole-batch handle",
        )

    def _context(self, folder: Path) -> Any:
        from ts.context import Context  # TorchServe's, or handlers.torchserve.ts_api.context

        manifest_path = folder / MAR_MANIFEST
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
        # ctx.model_yaml_config: the archiver's --config-file, under the name the manifest records.
        config_path = folder / ((manifest.get("model") or {}).get("configFile") or "model-config.yaml")
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        gpu = 0 if self.spec.device != "cpu" and torch.cuda.is_available() else None
        context = Context(
            self.spec.name, str(folder), manifest, 1, gpu, SERVER_VERSION,
            metrics=self.metrics, model_yaml_config=config or {},
        )  # fmt: skip
        # Where partial answers go (ts_api.streaming); TorchServe's own Context lacks both.
        context.stream_to, context.intermediate = None, {}
        return context

    def _start(self, module: Any, class_name: str | None = None) -> None:
        from ts.torch_handler.base_handler import BaseHandler as TorchServeBase

        if class_name is not None:  # TorchServe's default handler class, as its worker builds it
            self.service = getattr(module, class_name)()
            self.service.initialize(self.context)
            self.entry = self.service.handle
            self.per_request = True
            return
        name = self.function or "handle"
        entry = getattr(module, name, None)
        if inspect.isfunction(entry):  # a function entry point: called once without data to start
            entry(None, self.context)
            self.entry = entry
            return
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            raise ConfigError(
                f"Handler {self.file} must define one class or a function {name}(data, context); "
                f"it defines {[c.__name__ for c in classes]}"
            )
        self.service = classes[0]()
        self.service.initialize(self.context)
        self.entry = getattr(self.service, name, None)
        if not callable(self.entry):
            raise ConfigError(f"Handler class {classes[0].__name__} has no method {name}")
        self.per_request = (
            name == "handle"
            and isinstance(self.service, TorchServeBase)
            and type(self.service).handle is TorchServeBase.handle
            and "handle" not in vars(self.service)  # set per instance: micro-batching's handle
        )

    # -- one request ---------------------------------------------------------------------------
    def preprocess(self, data: bytes, content_type: str | None = None) -> TorchServeRequest:
        request = TorchServeRequest(request_row(data, content_type), {"Content-Type": content_type or ""})
        if self.per_request:
            self.service.context = self.context
            try:
                request.tensor = self.service.preprocess([request.row])
            except RaytorchError:  # ts_api's own checks (an image's limits) say what is wrong
                raise
            except Exception as exc:
                status = _status_of(exc)
                if status is not None:
                    raise HandlerStatusError(str(getattr(exc, "message", exc)), status) from None
                raise BadInputError(
                    f"The handler's preprocess refused this input: {type(exc).__name__}: {exc}"
                ) from None
        return request

    # -- one batch -----------------------------------------------------------------------------
    def collate(self, items: list[TorchServeRequest]) -> Any:
        from ts.context import RequestProcessor

        self.context.request_processor = [RequestProcessor(item.headers) for item in items]
        self.context.request_ids = {i: str(i) for i in range(len(items))}
        self.context.intermediate = {}
        rows = [item.row for item in items]
        if not self.per_request:
            return rows
        tensors = [item.tensor for item in items]
        if all(isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1 for t in tensors) and (
            len({t.shape for t in tensors}) == 1
        ):
            return torch.cat(tensors)
        return OneByOne(tensors)

    def inference(self, batch: Any) -> Any:
        if not self.per_request:
            assert self.entry is not None
            return self.entry(batch, self.context)
        if isinstance(batch, OneByOne):
            return OneByOne([self.service.inference(value) for value in batch.values])
        return self.service.inference(batch)

    def postprocess(self, output: Any, items: list[Any]) -> list[Any]:
        if isinstance(output, OneByOne):
            results = [answer for value in output.values for answer in self.service.postprocess(value)]
        else:
            results = output if not self.per_request else self.service.postprocess(output)
        if not isinstance(results, list):
            raise InferenceError(f"Handler {self.file} returned {type(results).__name__}, not a list")
        results = [bytes(r) if isinstance(r, bytearray) else r for r in results]
        # Partial answers a client did not stream come first in its one answer, as a
        # TorchServe client reading the whole chunked body gets them.
        for index, parts in self.context.intermediate.items():
            if 0 <= index < len(results):
                results[index] = joined([*parts, results[index]])
        return results

    def predict_batch(self, items: list[Any]) -> list[Any]:
        try:
            return super().predict_batch(items)
        except InferenceError as exc:
            status = _status_of(exc.__cause__) if exc.__cause__ else None
            if status is None:
                raise
            cause = exc.__cause__
            raise HandlerStatusError(str(getattr(cause, "message", cause)), status) from None

    def stream_into(self, item: TorchServeRequest, emit: Callable[[Any], None]) -> None:
        """Each ``send_intermediate_predict_response`` value to ``emit`` as the handler sends
        it, then its final answer."""
        self.context.stream_to = lambda value: emit(bytes(value) if isinstance(value, bytearray) else value)
        try:
            final = self.predict_batch([item])[0]
        except InferenceError as exc:
            if isinstance(exc.__cause__, StreamCancelled):
                raise exc.__cause__ from None
            raise
        finally:
            self.context.stream_to = None
        emit(final)

    def explain(self, item: TorchServeRequest, request: ExplainRequest) -> Any:
        """The handler's ``explain_handle`` (``get_insights``) answer for one input, as
        TorchServe's ``/explanations`` gets it: the request carries the ``explain`` header
        and its ``target``. A heat map needs a ``[C][H][W]`` attribution map."""
        from ts.context import RequestProcessor

        row = dict(item.row)
        if request.target is not None:
            row["target"] = int(request.target) if request.target.lstrip("-").isdigit() else request.target
        self.context.request_processor = [RequestProcessor({**item.headers, "explain": "True"})]
        self.context.request_ids, self.context.intermediate = {0: "0"}, {}
        if self.per_request and not _explains(self.service):
            # TorchServe's own BaseHandler.explain_handle calls get_insights unchecked (an
            # AttributeError there); both ts APIs answer the same: the model cannot explain.
            raise NotImplementedFeatureError(f"Model {self.spec.name} has no explanations: no get_insights")
        try:
            if self.per_request:
                self.service.context = self.context
                results = self.service.explain_handle(item.tensor, [row])
            else:
                assert self.entry is not None
                results = self.entry([row], self.context)
        except NotImplementedError as exc:
            raise NotImplementedFeatureError(f"Model {self.spec.name} has no explanations: {exc}") from None
        except Exception as exc:
            status = _status_of(exc)
            if status is not None:
                raise HandlerStatusError(str(getattr(exc, "message", exc)), status) from None
            reason = f"{type(exc).__name__}: {exc}"
            raise InferenceError(f"Handler {self.file} failed to explain: {reason}") from exc
        if not isinstance(results, list) or not results:
            raise InferenceError(f"Handler {self.file} explained with {type(results).__name__}, not a list")
        if not request.heatmap:
            return results[0]
        attributions = torch.as_tensor(results[0], dtype=torch.float32)
        if attributions.dim() != 3:
            raise BadInputError("A heat map needs an attribution map [C][H][W]; ask for JSON instead")
        return heatmap_png(attributions)

    def describe(self) -> Any:
        """The handler's own ``describe_handle()`` answer when it has one (TorchServe's
        customised metadata), else raytorch's description of the model."""
        custom = self.service.describe_handle() if hasattr(self.service, "describe_handle") else None
        if isinstance(custom, str | bytes):
            with contextlib.suppress(ValueError):  # a JSON text is metadata; other text stays text
                custom = json.loads(custom)
        if custom is not None:
            return custom
        return {
            **super().describe(),
            "torchserveHandler": self.file + (f":{self.function}" if self.function else ""),
            "torchserveApi": self.api,
            "perRequestPreprocess": self.per_request,
        }


def joined(parts: list[Any]) -> Any:
    """Partial answers and the final one as one answer: text or bytes concatenated (what a
    TorchServe client reads from the chunked body), anything else as a list."""
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    if all(isinstance(p, bytes | bytearray) for p in parts):
        return b"".join(parts)
    return parts


def _explains(service: Any) -> bool:
    """Whether a TorchServe handler object can explain: it has ``get_insights``, or a class of
    its own (not TorchServe's base handler) overrides ``explain_handle``."""
    if hasattr(service, "get_insights"):
        return True
    owner = next((cls for cls in type(service).__mro__ if "explain_handle" in vars(cls)), None)
    return owner is not None and not owner.__module__.startswith(("ts.", "handlers.torchserve."))
