"""`raytorch torchserve`'s reading of TorchServe's settings: config.properties as Java reads it,
TorchServe's precedence (TS_* variables, flags, file, defaults), every documented key mapped,
ignored or refused, and the Serve config built from them. No Ray."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from deployments.common.management_args import ManagementArgs
from deployments.common.settings import IngressArgs
from raytorch import torchserve_cli
from raytorch.ts_config import KEYS, ConfigRefused, env_name, resolve
from raytorch.ts_properties import PropertiesError, parse_properties, resolve_env_references
from raytorch.ts_serve_config import parse_address, serve_config, startup_entries

# Every key TorchServe 0.12's ConfigManager reads from config.properties (its TS_* constants and
# the undocumented ones it still reads), as the table must cover them all.
TORCHSERVE_KEYS = """
debug inference_address management_address metrics_address load_models blacklist_env_vars
default_workers_per_model default_response_timeout default_startup_timeout unregister_model_timeout
number_of_netty_threads netty_client_threads job_queue_size number_of_gpu metrics_config metrics_mode
model_metrics_auto_detect disable_system_metrics ipex_enable cpu_launcher_enable cpu_launcher_args
ipex_gpu_enable async_logging cors_allowed_origin cors_allowed_methods cors_allowed_headers
decode_input_request keystore keystore_pass keystore_type certificate_file private_key_file
max_request_size max_response_size limit_max_image_pixels default_service_handler service_envelope
model_server_home model_store prefer_direct_buffer allowed_urls install_py_dep_per_model
enable_metrics_api grpc_inference_address grpc_management_address grpc_inference_port
grpc_management_port grpc_inference_max_connection_age_ms grpc_management_max_connection_age_ms
grpc_inference_max_connection_age_grace_ms grpc_management_max_connection_age_grace_ms
enable_grpc_ssl initial_worker_port initial_distribution_port workflow_store cpp_log_config
ts_open_inference_protocol token_expiration_min ts_header_key_sequence_id ts_header_key_sequence_start
ts_header_key_sequence_end disable_token_authorization enable_model_api use_native_io io_ratio
metric_time_interval enable_envvars_config model_snapshot models system_metrics_cmd vmargs
plugins_path use_env_allowed_urls
""".split()  # noqa: SIM905 (a list literal of 73 words would be longer to read)


def test_every_torchserve_key_is_mapped_ignored_or_refused() -> None:
    missing = [key for key in TORCHSERVE_KEYS if key not in KEYS]
    assert missing == []
    assert {rule.action for rule in KEYS.values()} == {"mapped", "ignored", "refused"}
    assert all(rule.where for rule in KEYS.values())


def test_java_properties_syntax() -> None:
    text = (
        "# a comment\n"
        "! another comment\n"
        "\n"
        "inference_address=http://0.0.0.0:8080\n"
        "management_address : http://0.0.0.0:8081\n"
        "   metrics_address    http://0.0.0.0:8082\n"
        "models={\\\n"
        '    "noop": {"1.0": {"minWorkers": 1}}\\\n'
        "  }\n"
        "key\\=with\\:escapes=a\\tb\\u0041\n"
        "job_queue_size=10\n"
        "job_queue_size=20\n"
        "empty=\n"
        "  # indented comment\n"
    )
    values = parse_properties(text)
    assert values["inference_address"] == "http://0.0.0.0:8080"
    assert values["management_address"] == "http://0.0.0.0:8081"
    assert values["metrics_address"] == "http://0.0.0.0:8082"
    assert json.loads(values["models"]) == {"noop": {"1.0": {"minWorkers": 1}}}
    assert values["key=with:escapes"] == "a\tbA"
    assert values["job_queue_size"] == "20"  # the last one wins, as in Java
    assert values["empty"] == ""
    assert not any(key.startswith("#") for key in values)


def test_malformed_unicode_escape_names_the_line() -> None:
    with pytest.raises(PropertiesError, match="line 2"):
        parse_properties("a=1\nb=\\u12\n")


def test_env_references_in_values() -> None:
    values = resolve_env_references({"model_store": "$$STORE$$/models"}, {"STORE": "/srv"})
    assert values == {"model_store": "/srv/models"}
    with pytest.raises(PropertiesError, match="MISSING"):
        resolve_env_references({"model_store": "$$MISSING$$"}, {})


def test_precedence_env_then_flag_then_file_then_default() -> None:
    file_values = {"enable_envvars_config": "true", "model_store": "/file", "job_queue_size": "7"}
    flags = {"model_store": ("/flag", "--model-store")}
    env = {"TS_MODEL_STORE": "/env", "TS_DEFAULT_RESPONSE_TIMEOUT": "30"}
    config = resolve(file_values, flags, env)
    assert (config.get("model_store"), config.origin("model_store")) == ("/env", "env TS_MODEL_STORE")
    assert config.get("default_response_timeout") == "30"
    assert config.get("job_queue_size") == "7" and config.origin("job_queue_size") == "file config.properties"
    assert config.get("max_request_size") == "6553500" and config.origin("max_request_size") == "default"
    # Without the file's enable_envvars_config, the variables do not count: the flag wins.
    config = resolve({"model_store": "/file"}, flags, env)
    assert (config.get("model_store"), config.origin("model_store")) == ("/flag", "flag --model-store")


def test_allowed_urls_from_env_only_with_use_env_allowed_urls() -> None:
    env = {env_name("allowed_urls"): "https://models.example/.*"}
    config = resolve({"enable_envvars_config": "true"}, {}, env)
    assert config.get("allowed_urls") is None
    assert any("use_env_allowed_urls" in warning for warning in config.warnings)
    config = resolve({"enable_envvars_config": "true", "use_env_allowed_urls": "true"}, {}, env)
    assert config.get("allowed_urls") == "https://models.example/.*"


def test_token_expiration_variable_is_torchserves_name() -> None:
    assert env_name("token_expiration_min") == "TS_TOKEN_EXPIRATION_TIME_MIN"
    assert env_name("ts_open_inference_protocol") == "TS_OPEN_INFERENCE_PROTOCOL"
    config = resolve({"enable_envvars_config": "true"}, {}, {"TS_TOKEN_EXPIRATION_TIME_MIN": "5"})
    assert config.get("token_expiration_min") == "5"


def test_refused_keys_are_named_all_at_once() -> None:
    with pytest.raises(ConfigRefused) as refused:
        resolve({"keystore": "ks.p12", "ipex_enable": "true", "model_snapshot": "{}"}, {}, {})
    text = "\n".join(refused.value.problems)
    assert "keystore" in text and "openssl pkcs12" in text and "keytool" in text
    assert "ipex_enable" in text and "model_snapshot" in text
    # A switch we cannot honour is fine while it is off.
    resolve({"ipex_enable": "false"}, {}, {})


def test_ignored_and_unknown_keys_are_warned_by_name() -> None:
    config = resolve({"number_of_netty_threads": "4", "infrence_address": "http://x:1"}, {}, {})
    assert any(w.startswith("number_of_netty_threads") and "ignored" in w for w in config.warnings)
    assert any(w.startswith("infrence_address") and "not a TorchServe setting" in w for w in config.warnings)


def test_addresses() -> None:
    assert parse_address("a", "https://0.0.0.0:8443").url == "https://0.0.0.0:8443"
    assert parse_address("a", "https://127.0.0.1").port == 443
    assert parse_address("a", "http://localhost").port == 80
    with pytest.raises(ConfigRefused, match="unix"):
        parse_address("inference_address", "unix:/tmp/ts.sock")
    with pytest.raises(ConfigRefused, match="inference_address"):
        parse_address("inference_address", "127.0.0.1:8080")


def _mar(path: Path, name: str, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": name, "modelVersion": version}})
        )
    return path


def test_load_models_forms(tmp_path: Path) -> None:
    _mar(tmp_path / "a.mar", "a", "1.0")
    _mar(tmp_path / "b.mar", "b", "2.0")
    (tmp_path / "notes.txt").write_text("not a model")
    assert startup_entries("all", tmp_path) == [(None, "a.mar"), (None, "b.mar")]
    assert startup_entries("standalone", tmp_path) == []
    assert startup_entries("x=a.mar, b.mar,https://host/c.mar", tmp_path) == [
        ("x", "a.mar"),
        (None, "b.mar"),
        (None, "https://host/c.mar"),
    ]


def _build(tmp_path: Path, values: dict[str, str], flags: dict | None = None) -> dict:
    config = resolve(values, flags or {}, {})
    serve, _ = serve_config(
        config, tmp_path, tmp_path / "state", tmp_path / "logs", tmp_path / "key_file.json"
    )
    IngressArgs.model_validate(serve["applications"][0]["args"])
    ManagementArgs.model_validate(serve["applications"][1]["args"])
    return serve


def test_serve_config_defaults_are_torchserves(tmp_path: Path) -> None:
    serve = _build(tmp_path, {})
    front = serve["applications"][0]["args"]["torchserve"]
    assert [(entry["apis"], entry["host"], entry["port"]) for entry in front["listeners"]] == [
        (["inference"], "127.0.0.1", 8080),
        (["management"], "127.0.0.1", 8081),
        (["metrics"], "127.0.0.1", 8082),
    ]
    assert [(entry["api"], entry["port"]) for entry in front["grpc_listeners"]] == [
        ("inference", 7070),
        ("management", 7071),
    ]
    management = serve["applications"][1]["args"]["torchserve"]
    assert management["model_api"] is False and management["key_file"].endswith("key_file.json")
    assert serve["applications"][0]["args"]["max_body_bytes"] == 6553500


def test_serve_config_mapped_settings(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("k")
    (tmp_path / "cert.pem").write_text("c")
    _mar(tmp_path / "noop.mar", "noop", "1.0")
    values = {
        "inference_address": "https://0.0.0.0:9443",
        "management_address": "https://0.0.0.0:9443",  # the same address: one listener, both APIs
        "enable_metrics_api": "false",
        "enable_grpc_ssl": "true",
        "private_key_file": str(tmp_path / "key.pem"),
        "certificate_file": str(tmp_path / "cert.pem"),
        "cors_allowed_origin": "https://a.example, https://b.example",
        "cors_allowed_methods": "GET, POST",
        "max_request_size": "1000",
        "job_queue_size": "10",
        "default_response_timeout": "30",
        "default_workers_per_model": "2",
        "allowed_urls": "file://.*,https://models\\.example/.*",
        "install_py_dep_per_model": "true",
        "load_models": "noop.mar",
        "models": '{"noop": {"1.0": {"minWorkers": 3, "batchSize": 4, "maxBatchDelay": 50}}}',
    }
    serve = _build(tmp_path, values, {"enable_model_api": ("true", "--enable-model-api")})
    ingress, management = (app["args"] for app in serve["applications"])
    (listener,) = ingress["torchserve"]["listeners"]
    assert listener["apis"] == ["inference", "management"] and listener["port"] == 9443
    assert listener["tls"]["certificate_file"] == str(tmp_path / "cert.pem")
    assert all(entry["tls"] for entry in ingress["torchserve"]["grpc_listeners"])
    assert ingress["torchserve"]["cors"]["allow_origins"] == ["https://a.example", "https://b.example"]
    assert (ingress["max_body_bytes"], ingress["request_timeout_s"]) == (1000, 30)
    assert management["allowed_urls"] == ["https://models\\.example/.*"]
    assert management["install_py_dep_per_model"] is True
    ts = management["torchserve"]
    assert ts["model_api"] is True and ts["default_workers"] == 2 and ts["job_queue_size"] == 10
    assert ts["startup_models"] == [
        {"url": "noop.mar", "model_name": None, "initial_workers": 3, "batch_size": 4, "max_batch_delay": 50}
    ]


def test_https_without_pem_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigRefused, match="private_key_file and certificate_file"):
        _build(tmp_path, {"inference_address": "https://127.0.0.1:8443"})


def test_disabled_tokens_have_no_key_file(tmp_path: Path) -> None:
    config = resolve({}, {"disable_token_authorization": ("true", "--disable-token-auth")}, {})
    serve, _ = serve_config(config, tmp_path, tmp_path / "s", tmp_path / "l", None)
    assert serve["applications"][0]["args"]["torchserve"]["key_file"] is None


def test_cli_refuses_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "config.properties").write_text("keystore=server.jks\nkeystore_pass=changeit\n")
    code = torchserve_cli.main(["--start", "--model-store", "store", "--ts-config", "config.properties"])
    err = capsys.readouterr().err
    assert code == 2 and "keystore=server.jks" in err and "keystore_pass" in err
    assert not (tmp_path / "key_file.json").exists()
    assert torchserve_cli.main(["--start", "--plugins-path", "/opt/plugins", "--model-store", "store"]) == 2
    assert "plugins_path" in capsys.readouterr().err


def test_cli_needs_a_model_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert torchserve_cli.main(["--start"]) == 1
    assert "Missing mandatory parameter --model-store" in capsys.readouterr().err
    assert torchserve_cli.main(["--start", "--model-store", "nowhere"]) == 1
    assert "--model-store directory not found: nowhere" in capsys.readouterr().err


def test_stop_without_a_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    assert torchserve_cli.main(["--stop"]) == 0
    assert "not currently running" in capsys.readouterr().out


def test_out_of_range_values_are_refused_before_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigRefused, match=r"ingress settings.*request_timeout_s"):
        _build(tmp_path, {"default_response_timeout": "7200"})
    with pytest.raises(ConfigRefused, match="default_workers_per_model='many'"):
        _build(tmp_path, {"default_workers_per_model": "many"})


def test_cli_names_a_taken_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import socket

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    (tmp_path / "store").mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        (tmp_path / "config.properties").write_text(f"management_address=http://127.0.0.1:{port}\n")
        assert torchserve_cli.main(["--start", "--model-store", "store"]) == 2
    assert f"port {port} is taken by" in capsys.readouterr().err
    assert not (tmp_path / "key_file.json").exists()


def test_a_pid_file_naming_another_program_is_not_ours(tmp_path: Path) -> None:
    pid_file = tmp_path / "torchserve.pid"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(str(sleeper.pid))
        assert torchserve_cli.running_pid(pid_file) is None  # alive, but not raytorch: never signalled
    finally:
        sleeper.kill()
        sleeper.wait()
    pid_file.write_text("not a pid")
    assert torchserve_cli.running_pid(pid_file) is None


def test_config_file_order_is_torchserves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TS_CONFIG_FILE", raising=False)
    args = torchserve_cli.build_parser().parse_args(["--start"])
    assert torchserve_cli.config_file(args) is None  # none: TorchServe's built-in defaults
    (tmp_path / "config.properties").write_text("")
    assert torchserve_cli.config_file(args) == Path("config.properties")
    args = torchserve_cli.build_parser().parse_args(["--start", "--ts-config", "flag.properties"])
    assert torchserve_cli.config_file(args) == Path("flag.properties")
    monkeypatch.setenv("TS_CONFIG_FILE", "env.properties")
    assert torchserve_cli.config_file(args) == Path("env.properties")
