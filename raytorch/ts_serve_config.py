"""The Serve config that ``raytorch torchserve`` runs, built from TorchServe's settings.

The same two applications as ``configs/quickstart.yaml`` (the ingress and the management API;
models come from ``load_models`` and registrations), with the ingress listening as TorchServe
does (``IngressArgs.torchserve``) and the management app holding TorchServe's key file,
``enable_model_api`` and startup models (``ManagementArgs.torchserve``). No Ray import here.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytorch.ts_config import ConfigRefused, TsConfig

ADDRESS = re.compile(r"(https|http)://([^:/]+)(?::([0-9]+))?/?", re.IGNORECASE)
ARCHIVE_SUFFIXES = (".mar", ".model", ".tar.gz")
# models={...} fields and where they go; TorchServe's other per-model fields are warned about.
MODEL_FIELDS = {
    "minWorkers": "initial_workers",
    "batchSize": "batch_size",
    "maxBatchDelay": "max_batch_delay",
    "responseTimeout": "response_timeout",
}
MODEL_FIELDS_KNOWN = {"maxWorkers", "marName", "defaultVersion", "startupTimeout", "runtimeType"}


@dataclass(frozen=True)
class Address:
    """A parsed ``http(s)://host:port`` of TorchServe's config."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_address(key: str, value: str) -> Address:
    """TorchServe's address syntax (port 80/443 when none is given); ConfigRefused otherwise."""
    if value.lower().startswith("unix:"):
        raise ConfigRefused([f"{key}={value}: unix sockets are not served; use http(s)://host:port"])
    match = ADDRESS.fullmatch(value.strip())
    if not match:
        raise ConfigRefused([f"{key}={value!r} is not an address like http://127.0.0.1:8080"])
    scheme = match.group(1).lower()
    port = int(match.group(3)) if match.group(3) else (443 if scheme == "https" else 80)
    return Address(scheme, match.group(2), port)


def read_manifest(path: Path) -> tuple[str | None, str | None]:
    """(modelName, modelVersion) of a local .mar, or (None, None) when it cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            model = json.loads(archive.read("MAR-INF/MANIFEST.json")).get("model", {})
        return model.get("modelName"), model.get("modelVersion")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None, None


def startup_entries(load_models: str | None, model_store: Path) -> list[tuple[str | None, str]]:
    """``load_models`` as (name or None, archive url): ``all``, ``standalone``, or a comma list
    of ``[name=]file-or-url``."""
    value = (load_models or "").strip()
    if not value or value.lower() == "standalone":
        return []
    if value.lower() == "all":
        if not model_store.is_dir():
            return []
        files = sorted(p.name for p in model_store.iterdir() if not p.name.startswith("."))
        return [(None, name) for name in files if name.endswith(ARCHIVE_SUFFIXES)]
    entries = []
    for item in value.split(","):
        name, _, url = item.strip().rpartition("=") if "=" in item else (None, "", item.strip())
        if url:
            entries.append((name.strip() or None if name else None, url.strip()))
    return entries


def startup_models(config: TsConfig, model_store: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The management app's startup models, with their ``models={...}`` settings; and warnings."""
    try:
        per_model = json.loads(config.get("models") or "{}")
        if not isinstance(per_model, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise ConfigRefused([f"models ({config.origin('models')}) is not valid JSON: {exc}"]) from None
    warnings, result = [], []
    for name, url in startup_entries(config.get("load_models"), model_store):
        archive_name, archive_version = read_manifest(model_store / url)
        key = name or archive_name or Path(url).name.split(".")[0]
        versions = per_model.get(key) or {}
        settings = versions.get(archive_version) if archive_version in versions else None
        if settings is None and len(versions) == 1:
            settings = next(iter(versions.values()))
        entry: dict[str, Any] = {"url": url, "model_name": name}
        for field, value in (settings or {}).items():
            if field in MODEL_FIELDS:
                entry[MODEL_FIELDS[field]] = int(value)
            elif field not in MODEL_FIELDS_KNOWN:
                warnings.append(f"models: {key}.{field} is ignored (not a setting raytorch maps)")
        if settings and "maxWorkers" in settings:
            warnings.append(f"models: {key}.maxWorkers is ignored; scale with PUT /models/{key}?max_worker=")
        result.append(entry)
    return result, warnings


def tls_files(config: TsConfig, needed_by: list[str]) -> dict[str, str] | None:
    """The PEM files, absolute; ConfigRefused when a listener needs TLS and they are missing."""
    key_file, cert_file = config.get("private_key_file"), config.get("certificate_file")
    if not needed_by:
        return None
    if not key_file or not cert_file:
        raise ConfigRefused(
            [f"{', '.join(needed_by)} need private_key_file and certificate_file (PEM) for TLS"]
        )
    files = {
        "private_key_file": str(Path(key_file).resolve()),
        "certificate_file": str(Path(cert_file).resolve()),
    }
    for key, path in files.items():
        if not Path(path).is_file():
            raise ConfigRefused([f"{key}={path} ({config.origin(key)}): no such file"])
    return files


def listeners(config: TsConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """HTTP listeners (APIs sharing an address share a listener, as TorchServe's "ALL"
    connector) and gRPC listeners, TLS included."""
    apis = ["inference", "management"] + (["metrics"] if config.flag("enable_metrics_api") else [])
    addresses = {api: parse_address(f"{api}_address", config.get(f"{api}_address") or "") for api in apis}
    needing_tls = [f"{api}_address" for api, address in addresses.items() if address.scheme == "https"]
    grpc_tls = config.flag("enable_grpc_ssl")
    tls = tls_files(config, needing_tls + (["enable_grpc_ssl"] if grpc_tls else []))
    by_address: dict[tuple[str, int], dict[str, Any]] = {}
    for api, address in addresses.items():
        same = by_address.get((address.host, address.port))
        if same is not None:
            if (same["tls"] is not None) != (address.scheme == "https"):
                raise ConfigRefused([f"{api}_address shares {address.host}:{address.port} with another "
                                     "API but not its scheme (http/https)"])  # fmt: skip
            same["apis"].append(api)
            continue
        by_address[(address.host, address.port)] = {
            "apis": [api],
            "host": address.host,
            "port": address.port,
            "tls": dict(tls) if tls and address.scheme == "https" else None,
        }
    grpc = [
        {
            "api": api,
            "host": config.get(f"grpc_{api}_address"),
            "port": config.number(f"grpc_{api}_port"),
            "tls": dict(tls) if tls and grpc_tls else None,
        }
        for api in ("inference", "management")
    ]
    return list(by_address.values()), grpc


def allowed_url_patterns(config: TsConfig) -> tuple[list[str], list[str]]:
    """TorchServe's comma-separated allowed_urls as our http(s) patterns; and warnings."""
    value = config.get("allowed_urls")
    if value is None:
        return [], ["allowed_urls is not set: only archives of the model store are registered (TorchServe "
                    "would fetch any URL); list the URLs to allow in allowed_urls"]  # fmt: skip
    kept, warnings = [], []
    for pattern in (p.strip() for p in value.split(",")):
        if pattern.lower().startswith("file"):
            warnings.append(f"allowed_urls: {pattern} dropped: local archives come from the model store only")
        elif pattern:
            kept.append(pattern)
    return kept, warnings


def serve_config(
    config: TsConfig, model_store: Path, state_dir: Path, log_dir: Path, key_file: Path | None
) -> tuple[dict[str, Any], list[str]]:
    """The Serve config (a dict for ``raytorch.launch``) and the warnings building it gave."""
    http, grpc = listeners(config)
    models, warnings = startup_models(config, model_store)
    urls, url_warnings = allowed_url_patterns(config)
    expiration = float(config.get("token_expiration_min") or 60)
    if config.get("metrics_mode") not in (None, "prometheus") and config.origin("metrics_mode") != "default":
        warnings.append(f"metrics_mode={config.get('metrics_mode')}: metrics are served as Prometheus text")
    default_workers = config.number("default_workers_per_model") or None
    inference = next(listener for listener in http if "inference" in listener["apis"])
    ingress_args = {
        "max_body_bytes": config.number("max_request_size"),
        "request_timeout_s": config.number("default_response_timeout"),
        "log_dir": str(log_dir),
        "torchserve": {
            "listeners": http,
            "grpc_listeners": grpc,
            "key_file": str(key_file) if key_file else None,
            "token_expiration_min": expiration,
            "cors": _cors(config),
        },
    }
    management_args = {
        "state_dir": str(state_dir),
        "model_store": str(model_store),
        "allowed_urls": urls,
        "register_timeout_s": config.number("default_startup_timeout"),
        "install_py_dep_per_model": config.flag("install_py_dep_per_model"),
        "torchserve": {
            "key_file": str(key_file) if key_file else None,
            "token_expiration_min": expiration,
            "model_api": config.flag("enable_model_api"),
            "startup_models": models,
            "default_workers": default_workers,
            "job_queue_size": config.number("job_queue_size"),
            "default_response_timeout": config.number("default_response_timeout"),
        },
    }
    ingress = {"name": "ingress", "route_prefix": "/", "import_path": "deployments.app:build_ingress"}
    management = {"name": "management", "route_prefix": "/models"}
    management["import_path"] = "deployments.app:build_management"
    serve = {
        "proxy_location": "Disabled",
        # Not listened on in this mode (the ingress has its own listeners); the launcher checks it.
        "http_options": {"host": inference["host"], "port": inference["port"]},
        "applications": [{**ingress, "args": ingress_args}, {**management, "args": management_args}],
    }
    check_args(serve)
    return serve, warnings + url_warnings


def check_args(serve: dict[str, Any]) -> None:
    """Validate both applications' args now, as Serve would at deploy: ConfigRefused naming the
    field, before anything starts (e.g. default_response_timeout over an hour)."""
    from pydantic import ValidationError

    from deployments.common.management_args import ManagementArgs
    from deployments.common.settings import IngressArgs
    from handlers.errors import validation_message

    for app, model in zip(serve["applications"], (IngressArgs, ManagementArgs), strict=True):
        try:
            model.model_validate(app["args"])
        except ValidationError as exc:
            raise ConfigRefused([f"{app['name']} settings: {validation_message(exc.errors())}"]) from None


def listen_ports(serve: dict[str, Any]) -> list[int]:
    """Every port the ingress will listen on (HTTP and gRPC)."""
    front = serve["applications"][0]["args"]["torchserve"]
    return [listener["port"] for listener in front["listeners"] + front["grpc_listeners"]]


def _cors(config: TsConfig) -> dict[str, list[str]] | None:
    origin = config.get("cors_allowed_origin")
    if not origin:
        return None

    def items(key: str) -> list[str]:
        return [part.strip() for part in (config.get(key) or "").split(",") if part.strip()]

    return {
        "allow_origins": items("cors_allowed_origin"),
        "allow_methods": items("cors_allowed_methods"),
        "allow_headers": items("cors_allowed_headers"),
    }
