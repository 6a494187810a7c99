"""TorchServe's gRPC management calls (``ManagementAPIsService``) as the REST API's requests.

The management deployment answers them with the same FastAPI app as ``/models``, so both
transports share one parser, one token check, one wording and one error mapping. proto3 has
no "unset": like TorchServe, an empty string or a zero number means "not given" (so the REST
default applies), except ``synchronous``, whose gRPC default is false as in TorchServe. No Ray
here.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from deployments.common.forwarding import ForwardedRequest, ManagementCall
from handlers.errors import BadInputError

# RPC -> the register/scale fields it passes on as query parameters (REST names).
QUERY_FIELDS = {
    "RegisterModel": (
        "url", "model_name", "handler", "runtime", "batch_size", "max_batch_delay",
        "initial_workers", "response_timeout", "startup_timeout",
    ),
    "ListModels": ("limit", "next_page_token"),
    "ScaleWorker": ("min_worker", "max_worker"),
}  # fmt: skip


def _path(*parts: str) -> str:
    return "/models" + "".join("/" + quote(p, safe="") for p in parts if p)


def as_http(call: ManagementCall) -> ForwardedRequest:
    """The REST request that does what ``call`` asks."""
    f = call.fields
    model, version = f.get("model_name", ""), f.get("model_version", "")
    query = {k: f[k] for k in QUERY_FIELDS.get(call.rpc, ()) if f.get(k) not in (None, "", 0)}
    if call.rpc in ("RegisterModel", "ScaleWorker"):
        query["synchronous"] = "true" if f.get("synchronous") else "false"
    if call.rpc == "DescribeModel" and f.get("customized"):
        query["customized"] = "true"
    routes = {
        "RegisterModel": ("POST", "/models"),
        "ListModels": ("GET", "/models"),
        "DescribeModel": ("GET", _path(model, version)),
        "ScaleWorker": ("PUT", _path(model, version)),
        "SetDefault": ("PUT", _path(model, version, "set-default")),
        "UnregisterModel": ("DELETE", _path(model, version)),
    }
    if call.rpc not in routes:
        raise BadInputError(f"Unknown management call {call.rpc!r}")
    if call.rpc not in ("RegisterModel", "ListModels") and not model:
        raise BadInputError("Parameter model_name is required.")
    if call.rpc == "SetDefault" and not version:
        raise BadInputError("Parameter model_version is required.")
    method, path = routes[call.rpc]
    headers = [(b"authorization", call.authorization.encode("latin-1"))] if call.authorization else []
    return ForwardedRequest(method, path, urlencode(query).encode(), headers)
