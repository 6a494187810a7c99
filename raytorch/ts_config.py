"""TorchServe's settings (``config.properties``, ``TS_*`` variables, ``torchserve`` flags) and
what each one becomes here: the table :data:`KEYS`, and the precedence that picks each value.

Precedence is TorchServe 0.12's (its docs/configuration.md and ConfigManager): an environment
variable ``TS_<KEY>`` (only with ``enable_envvars_config=true``; ``TS_ALLOWED_URLS`` only with
``use_env_allowed_urls=true`` too), then the command line, then the file, then TorchServe's
default. Every key TorchServe documents is in :data:`KEYS` and is one of:

- ``mapped``: it takes effect; ``where`` says as what (docs/torchserve-compatibility.md);
- ``ignored``: harmless here (JVM, Netty, log4j tuning...): named in a warning at start;
- ``refused``: the server would not do what it says: the start fails, naming the key; keys
  with ``allowed`` values are refused only for other values (``ipex_enable=true``).

A key TorchServe does not know is warned about (TorchServe ignores it silently; a typo should
not go unseen). No Ray import here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["mapped", "ignored", "refused"]


@dataclass(frozen=True)
class Key:
    """One TorchServe setting: what it becomes here, its default, its variable."""

    action: Action
    where: str
    default: str | None = None
    env: bool = True  # settable as TS_<KEY> with enable_envvars_config=true
    allowed: frozenset[str] | None = None  # for refused keys: the values that are fine


def _off(why: str) -> Key:
    """A switch we cannot honour when on: refused unless false."""
    return Key("refused", why, "false", allowed=frozenset({"false"}))


KEYS: dict[str, Key] = {
    # Listeners and TLS
    "inference_address": Key("mapped", "the inference listener (HTTP or HTTPS)", "http://127.0.0.1:8080"),
    "management_address": Key("mapped", "the management listener", "http://127.0.0.1:8081"),
    "metrics_address": Key("mapped", "the metrics listener (GET /metrics)", "http://127.0.0.1:8082"),
    "grpc_inference_address": Key("mapped", "the gRPC inference listener's host", "127.0.0.1"),
    "grpc_management_address": Key("mapped", "the gRPC management listener's host", "127.0.0.1"),
    "grpc_inference_port": Key("mapped", "the gRPC inference listener's port", "7070"),
    "grpc_management_port": Key("mapped", "the gRPC management listener's port", "7071"),
    "enable_grpc_ssl": Key("mapped", "TLS on both gRPC listeners, from the PEM files", "false"),
    "private_key_file": Key("mapped", "TLS private key (PEM) of every https listener and gRPC with TLS"),
    "certificate_file": Key("mapped", "TLS certificate chain (PEM), the same listeners"),
    "keystore": Key(
        "refused",
        "Java keystores are not read: convert to PEM and set private_key_file and certificate_file: "
        "openssl pkcs12 -in KEYSTORE -nocerts -nodes -out key.pem; "
        "openssl pkcs12 -in KEYSTORE -nokeys -out cert.pem (a JKS keystore first: keytool "
        "-importkeystore -srckeystore KEYSTORE -destkeystore store.p12 -deststoretype PKCS12)",
    ),
    "keystore_pass": Key("refused", "keystores are not read: see keystore"),
    "keystore_type": Key("refused", "keystores are not read: see keystore"),
    "cors_allowed_origin": Key("mapped", "Starlette's CORSMiddleware allow_origins, on every listener"),
    "cors_allowed_methods": Key("mapped", "CORSMiddleware allow_methods"),
    "cors_allowed_headers": Key("mapped", "CORSMiddleware allow_headers"),
    # Tokens and the model API
    "disable_token_authorization": Key("mapped", "no key file, no keys asked", "false"),
    "token_expiration_min": Key("mapped", "lifetime of the management and inference keys", "60"),
    "enable_model_api": Key("mapped", "register/unregister over the API (405 when false)", "false"),
    # Models
    "model_store": Key("mapped", "management model_store (where url=x.mar is looked up)"),
    "load_models": Key("mapped", "models the management app registers at start"),
    "models": Key("mapped", "per-model minWorkers, batchSize, maxBatchDelay, responseTimeout", env=False),
    "workflow_store": Key(
        "mapped", "RAYTORCH_WORKFLOW_STORE of the server (read where workflows are served)"
    ),
    "default_workers_per_model": Key("mapped", "initial_workers of registrations that name none", "0"),
    "default_response_timeout": Key("mapped", "ingress request_timeout_s; describe's responseTimeout", "120"),
    "default_startup_timeout": Key("mapped", "management register_timeout_s", "120"),
    "max_request_size": Key("mapped", "ingress max_body_bytes (413 above)", "6553500"),
    "job_queue_size": Key("mapped", "max_queued_requests of each registered model (503 above)", "100"),
    "allowed_urls": Key("mapped", "management allowed_urls (http/https patterns; file:// ones dropped)"),
    "use_env_allowed_urls": Key("mapped", "lets TS_ALLOWED_URLS count", "false", env=False),
    "enable_envvars_config": Key("mapped", "lets TS_* variables count", "false", env=False),
    "metrics_mode": Key(
        "mapped", "always Prometheus text on metrics_address ('log' and 'legacy' too)", "log"
    ),
    "enable_metrics_api": Key("mapped", "false: no metrics listener", "true"),
    "install_py_dep_per_model": Key(
        "mapped",
        "management install_py_dep_per_model (a .mar's requirements.txt in Ray's runtime_env)",
        "false",
    ),
    "model_snapshot": Key("refused", "snapshots are not read: the registry restores models", env=False),
    "default_service_handler": Key("refused", "a server-wide default handler is not supported"),
    "service_envelope": Key("refused", "request envelopes (json, kserve) are not supported"),
    "ipex_enable": _off("Intel Extension for PyTorch is not wired in"),
    "ipex_gpu_enable": _off("Intel Extension for PyTorch is not wired in"),
    "cpu_launcher_enable": _off("TorchServe's CPU launcher (core pinning) is not used: Ray places replicas"),
    "cpu_launcher_args": Key("ignored", "TorchServe's CPU launcher is not used"),
    "decode_input_request": Key("ignored", "handler files get JSON decoded and text as str, as its default"),
    # Harmless tuning of TorchServe's Java frontend and backends
    "max_response_size": Key("ignored", "answers are not capped", "6553500"),
    "unregister_model_timeout": Key("ignored", "unregister waits for Serve's own drain", "120"),
    "number_of_gpu": Key("ignored", "Ray sees the GPUs; num_gpus= per registration"),
    "limit_max_image_pixels": Key("ignored", "Pillow's own decompression-bomb limit stays on", "true"),
    "vmargs": Key("ignored", "no JVM", env=False),
    "number_of_netty_threads": Key("ignored", "no Netty"),
    "netty_client_threads": Key("ignored", "no Netty"),
    "async_logging": Key("ignored", "Python logging"),
    "prefer_direct_buffer": Key("ignored", "no Netty"),
    "use_native_io": Key("ignored", "no Netty", env=False),
    "io_ratio": Key("ignored", "no Netty", env=False),
    "debug": Key("ignored", "no JVM debugger"),
    "blacklist_env_vars": Key("ignored", "handlers see the server's environment"),
    "model_server_home": Key("ignored", "no TorchServe home"),
    "plugins_path": Key("refused", "Java plugins cannot run here"),
    "metrics_config": Key("ignored", "metrics are Prometheus's, not metrics.yaml's"),
    "model_metrics_auto_detect": Key("ignored", "metrics are Prometheus's"),
    "disable_system_metrics": Key("ignored", "system metrics come from Ray's exporter"),
    "system_metrics_cmd": Key("ignored", "system metrics come from Ray's exporter", env=False),
    "metric_time_interval": Key("ignored", "Prometheus scrapes on its own schedule", env=False),
    "initial_worker_port": Key("ignored", "replicas talk over Ray, not ports"),
    "initial_distribution_port": Key("ignored", "no torchrun workers"),
    "cpp_log_config": Key("ignored", "no C++ backend"),
    "ts_open_inference_protocol": Key("ignored", "Open Inference Protocol is always served (/v2, gRPC)"),
    "ts_header_key_sequence_id": Key("ignored", "sequence batching is not supported"),
    "ts_header_key_sequence_start": Key("ignored", "sequence batching is not supported"),
    "ts_header_key_sequence_end": Key("ignored", "sequence batching is not supported"),
    "grpc_inference_max_connection_age_ms": Key("ignored", "gRPC connections are not aged out"),
    "grpc_management_max_connection_age_ms": Key("ignored", "gRPC connections are not aged out"),
    "grpc_inference_max_connection_age_grace_ms": Key("ignored", "gRPC connections are not aged out"),
    "grpc_management_max_connection_age_grace_ms": Key("ignored", "gRPC connections are not aged out"),
}
# ConfigManager's variable names where they are not TS_<KEY>.
ENV_NAMES = {"token_expiration_min": "TS_TOKEN_EXPIRATION_TIME_MIN"}


def env_name(key: str) -> str:
    """The ``TS_*`` variable of a key (``ts_open_inference_protocol`` -> ``TS_OPEN_INFERENCE_PROTOCOL``)."""
    if key in ENV_NAMES:
        return ENV_NAMES[key]
    return key.upper() if key.startswith("ts_") else f"TS_{key.upper()}"


class ConfigRefused(ValueError):
    """Settings the server cannot honour: one line per key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Setting:
    """A value and where it came from: 'flag --x', 'env TS_X', 'file NAME' or 'default'."""

    value: str
    origin: str


@dataclass
class TsConfig:
    """The settings in effect, each with its origin, and the warnings to print."""

    settings: dict[str, Setting]
    warnings: list[str] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        """The value in effect (TorchServe's default when nothing set it), or None."""
        setting = self.settings.get(key)
        if setting is not None:
            return setting.value
        return KEYS[key].default if key in KEYS else None

    def flag(self, key: str) -> bool:
        """A boolean setting as Java's Boolean.parseBoolean reads it ('true', any case)."""
        return (self.get(key) or "").strip().lower() == "true"

    def number(self, key: str) -> int:
        """An integer setting; ConfigRefused naming the key when it is not one."""
        value = (self.get(key) or "").strip()
        try:
            return int(value)
        except ValueError:
            raise ConfigRefused([f"{key}={value!r} is not an integer"]) from None

    def origin(self, key: str) -> str:
        """Where the value in effect came from."""
        setting = self.settings.get(key)
        return setting.origin if setting is not None else "default"


def resolve(
    file_values: Mapping[str, str],
    flags: Mapping[str, tuple[str, str]],
    environ: Mapping[str, str] | None = None,
    file_name: str = "config.properties",
) -> TsConfig:
    """Apply TorchServe's precedence; ConfigRefused lists every refused key (all at once).

    ``flags`` maps keys to (value, flag name), e.g. ``{"model_store": ("/m", "--model-store")}``.
    """
    environ = os.environ if environ is None else environ
    settings = {key: Setting(value.strip(), f"file {file_name}") for key, value in file_values.items()}
    for key, (value, flag) in flags.items():
        settings[key] = Setting(value, f"flag {flag}")
    config = TsConfig(settings)
    if config.flag("enable_envvars_config"):
        for key, rule in KEYS.items():
            name = env_name(key)
            if not rule.env or name not in environ:
                continue
            if key == "allowed_urls" and not config.flag("use_env_allowed_urls"):
                config.warnings.append(f"{name} is ignored without use_env_allowed_urls=true (as TorchServe)")
                continue
            settings[key] = Setting(environ[name].strip(), f"env {name}")
    problems = []
    for key, setting in settings.items():
        rule = KEYS.get(key)
        if rule is None:
            config.warnings.append(f"{key} ({setting.origin}) is not a TorchServe setting: ignored")
        elif rule.action == "ignored":
            config.warnings.append(f"{key} ({setting.origin}) is ignored: {rule.where}")
        elif rule.action == "refused" and (
            rule.allowed is None or setting.value.strip().lower() not in rule.allowed
        ):
            problems.append(f"{key}={setting.value[:80]} ({setting.origin}) cannot be honoured: {rule.where}")
    if problems:
        raise ConfigRefused(problems)
    return config
