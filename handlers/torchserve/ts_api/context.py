"""``ts.context``: what a TorchServe handler knows about its model and the current batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RequestProcessor:
    """The headers of one request of the batch, and what the handler sets for its response."""

    def __init__(self, request_header: dict[str, str]) -> None:
        self._request_property = dict(request_header)
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}

    def get_request_property(self, key: str) -> str | None:
        """A request header (None when absent)."""
        return self._request_property.get(key)

    def get_request_properties(self) -> dict[str, str]:
        """Every request header."""
        return self._request_property

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        """Record a response status (not sent: raytorch answers with the handler's result)."""
        self._status_code, self._reason_phrase = code, reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class NullMetrics:
    """Accepts TorchServe's metric calls (``add_time``, ``add_counter``, ...) and drops them:
    raytorch records its own request, queue and inference metrics for every model."""

    def _ignore(self, *args: Any, **kwargs: Any) -> NullMetrics:
        return self

    add_time = add_size = add_counter = add_percent = add_error = add_metric = _ignore
    add_or_update = update = get_metric = _ignore


class Context:
    """Model-level facts fixed at load time, plus the current batch's request headers."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any] | None,
        batch_size: int,
        gpu: int | None,
        mms_version: str,
        limit_max_image_pixels: bool = True,
        metrics: Any = None,
        model_yaml_config: dict[str, Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "raytorch",
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self.request_processor: list[RequestProcessor] = []
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.model_yaml_config = model_yaml_config or {}
        # Where send_intermediate_predict_response's values go: straight to a streaming
        # client (stream_to), else kept per request to be joined with the final answer.
        self.stream_to: Callable[[Any], None] | None = None
        self.intermediate: dict[int, list[Any]] = {}

    def send_intermediate(self, idx: int, value: Any) -> None:
        """One partial answer for request ``idx`` of the batch (see ``stream_to``)."""
        if self.stream_to is not None:
            self.stream_to(value)
        else:
            self.intermediate.setdefault(idx, []).append(value)

    @property
    def system_properties(self) -> dict[str, Any]:
        """``model_dir``, ``gpu_id``, ``batch_size`` and the server's name and version."""
        return self._system_properties

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx) if self.request_ids else None

    def get_request_header(self, idx: int, key: str) -> str | None:
        """Header ``key`` of request ``idx`` of the batch."""
        if idx >= len(self.request_processor):
            return None
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        if idx >= len(self.request_processor):
            return {}
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        if idx < len(self.request_processor):
            self.request_processor[idx].add_response_property(key, value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        if idx >= len(self.request_processor):
            return {}
        return self.request_processor[idx].get_response_headers()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if idx < len(self.request_processor):
            self.request_processor[idx].report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor:
            processor.report_status(code, phrase)
