"""``raytorch torchserve``: TorchServe's command line, so a deployment moves over unchanged.

::

    raytorch torchserve --start --ncs --model-store model_store --models densenet161=densenet161.mar \\
        --ts-config config.properties
    raytorch torchserve --stop

It reads ``config.properties`` and ``TS_*`` variables as TorchServe does (:mod:`raytorch.ts_config`),
prints which settings took effect and from where, refuses what it cannot honour (naming each key or
flag), writes TorchServe's ``key_file.json`` in the working directory, and runs the Serve config
built from it (:mod:`raytorch.ts_serve_config`) with :mod:`raytorch.launch`, as ``make serve`` does:
in the background with a pid file (``--start``), or in this process (``--foreground``). ``--stop``
sends SIGTERM to what ``--start`` started, waits for it to finish, and removes the key file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from deployments.common.ts_keys import write_new_key_file
from raytorch.ts_config import KEYS, ConfigRefused, TsConfig, resolve
from raytorch.ts_properties import PropertiesError, parse_properties, resolve_env_references
from raytorch.ts_serve_config import listen_ports, serve_config

PID_FILE = "torchserve.pid"
KEY_FILE = "key_file.json"
STOP_WAIT_S = 60.0  # the launcher stops within 15 s of SIGTERM; a margin for Ray's shutdown
# Flags TorchServe has that cannot be honoured: named at start (ignored), or refused.
IGNORED_FLAGS = {
    "log_config": "--log-config (log4j2 XML): raytorch logs with Python logging to LOG_LOCATION (./logs)",
    "cpp_log_config": "--cpp-log-config: there is no C++ backend",
}


def build_parser() -> argparse.ArgumentParser:
    """TorchServe's flags (ts/arg_parser.py), plus the two ports Ray itself needs."""
    parser = argparse.ArgumentParser(prog="raytorch torchserve", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-v", "--version", action="store_true", help="print the version")
    action.add_argument("--start", action="store_true", help="start the server (the default)")
    action.add_argument("--stop", action="store_true", help="stop the server --start started")
    parser.add_argument("--ts-config", help="config.properties (TS_CONFIG_FILE wins, as on TorchServe)")
    parser.add_argument("--model-store", help="where archives are looked up (overrides model_store)")
    parser.add_argument("--workflow-store", help="where workflow archives are (overrides workflow_store)")
    parser.add_argument(
        "--models", nargs="+", metavar="[NAME=]ARCHIVE", help="models to load at start, or all"
    )
    parser.add_argument("--log-config", help="TorchServe's log4j2 file: not used (named at start)")
    parser.add_argument("--cpp-log-config", help="not used: no C++ backend")
    parser.add_argument("--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "--ncs", "--no-config-snapshots", dest="ncs", action="store_true",
        help="start with no model of an earlier run (without it, registered models are restored)",
    )  # fmt: skip
    parser.add_argument("--plugins-path", "--ppath", help="TorchServe's Java plugins: refused")
    parser.add_argument("--disable-token-auth", "--dt", action="store_true", help="no key file, no keys")
    parser.add_argument("--enable-model-api", action="store_true", help="allow register/unregister")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard (127.0.0.1)")
    parser.add_argument(
        "--ray-metrics-port", type=int, default=0, help="Ray's own metrics exporter port (0: a free one)"
    )
    return parser


def state_base() -> Path:
    """Where the server keeps its state, pid file and generated Serve config."""
    return Path(os.environ.get("RAYTORCH_STATE_DIR") or ".raytorch").resolve()


def config_file(args: argparse.Namespace) -> Path | None:
    """TorchServe's order: TS_CONFIG_FILE, --ts-config, ./config.properties, none."""
    named = os.environ.get("TS_CONFIG_FILE") or args.ts_config
    if named:
        return Path(named)
    return Path("config.properties") if Path("config.properties").is_file() else None


def flag_settings(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """The flags that set config keys, as resolve() wants them."""
    flags: dict[str, tuple[str, str]] = {}
    if args.model_store:
        flags["model_store"] = (args.model_store, "--model-store")
    if args.workflow_store:
        flags["workflow_store"] = (args.workflow_store, "--workflow-store")
    if args.models:
        flags["load_models"] = (",".join(args.models), "--models")
    if args.disable_token_auth:
        flags["disable_token_authorization"] = ("true", "--disable-token-auth")
    if args.enable_model_api:
        flags["enable_model_api"] = ("true", "--enable-model-api")
    if args.plugins_path:
        flags["plugins_path"] = (args.plugins_path, "--plugins-path")
    return flags


def load_settings(args: argparse.Namespace) -> TsConfig:
    """The settings in effect; ConfigRefused (or PropertiesError) naming what is wrong."""
    path = config_file(args)
    values: dict[str, str] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigRefused([f"config file {path} not found"])
        values = resolve_env_references(parse_properties(path.read_text(encoding="utf-8")))
    config = resolve(values, flag_settings(args), file_name=str(path) if path else "config.properties")
    for attribute, message in IGNORED_FLAGS.items():
        if getattr(args, attribute):
            config.warnings.append(f"{message}: ignored")
    return config


def describe(config: TsConfig) -> str:
    """The settings that took effect, each with where it came from and what it became."""
    lines = ["Settings in effect (value, from, becomes):"]
    for key, rule in KEYS.items():
        value = config.get(key)
        if rule.action != "mapped" or value is None:
            continue
        shown = value if len(value) <= 60 else value[:57] + "..."
        lines.append(f"  {key} = {shown}  [{config.origin(key)}] -> {rule.where}")
    return "\n".join(lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (Ray's metrics exporter)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` when that process still runs, is not a zombie, and is ours (a
    raytorch command line: a pid reused by another program after a crash is never signalled)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return None if state == "Z" or b"raytorch" not in command else pid


def start(args: argparse.Namespace) -> int:
    """Check everything, print it, write the key file and Serve config, start the launcher."""
    try:
        config = load_settings(args)
        model_store_value = config.get("model_store")
        if not model_store_value:
            print("Missing mandatory parameter --model-store", file=sys.stderr)  # TorchServe's sentence
            return 1
        model_store = Path(model_store_value).resolve()
        if not model_store.is_dir():
            print(f"--model-store directory not found: {model_store_value}", file=sys.stderr)
            return 1
        base = state_base()
        pid_file = base / PID_FILE
        if running_pid(pid_file) is not None:
            print("raytorch torchserve is already running: stop it with raytorch torchserve --stop.")
            return 1
        state_dir = base / ("ncs" if args.ncs else "snapshot")
        if args.ncs:  # no snapshot: nothing of an earlier run comes back
            _empty(state_dir)
        log_dir = Path(os.environ.get("LOG_LOCATION") or "logs").resolve()
        key_file = None if config.flag("disable_token_authorization") else Path(KEY_FILE).resolve()
        serve, warnings = serve_config(config, model_store, state_dir, log_dir, key_file)
        from raytorch.launch import taken_ports

        taken = taken_ports([*listen_ports(serve), args.dashboard_port])
        if taken:
            raise ConfigRefused([*taken, "stop that process or choose other addresses"])
    except (ConfigRefused, PropertiesError) as exc:
        problems = exc.problems if isinstance(exc, ConfigRefused) else [str(exc)]
        print("Cannot start: " + "\n  ".join(["", *problems]), file=sys.stderr)
        return 2
    print(describe(config))
    for warning in config.warnings + warnings:
        print(f"Warning: {warning}")
    if config.get("workflow_store"):
        os.environ["RAYTORCH_WORKFLOW_STORE"] = str(Path(config.get("workflow_store") or "").resolve())
    for name in ("RAYTORCH_STATE_DIR", "RAYTORCH_MODEL_STORE", "RAYTORCH_LOG_DIR", "RAYTORCH_TOKEN"):
        os.environ.pop(name, None)  # the Serve config says it all; these would override it
    if key_file is not None:
        write_new_key_file(key_file, float(config.get("token_expiration_min") or 60))
        print(f"Token authorization is on: keys in {key_file} (management, inference, API).")
    else:
        print("Token authorization is off: every client may use every API.")
    config_path = base / "torchserve-serve.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(serve, sort_keys=False))
    ray_metrics = args.ray_metrics_port or free_port()
    launch_args = [
        str(config_path),
        "--metrics-port",
        str(ray_metrics),
        "--dashboard-port",
        str(args.dashboard_port),
    ]
    if args.foreground:
        from raytorch import launch

        pid_file.write_text(str(os.getpid()))
        try:
            return launch.main(launch_args)
        finally:
            pid_file.unlink(missing_ok=True)
            if key_file is not None:
                key_file.unlink(missing_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "raytorch.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "raytorch.launch", *launch_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(str(process.pid))
    print(f"raytorch is starting in the background (pid {process.pid}); log: {log_dir / 'raytorch.log'}")
    return 0


def _empty(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def stop() -> int:
    """SIGTERM to what --start started; wait until it is gone; remove the key and pid files."""
    pid_file = state_base() / PID_FILE
    pid = running_pid(pid_file)
    if pid is None:
        print("raytorch torchserve is not currently running.")
        pid_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while running_pid(pid_file) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    code = 0
    if running_pid(pid_file) is not None:
        print(f"The server (pid {pid}) did not stop within {STOP_WAIT_S:g}s: killing it.", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        code = 1
    Path(KEY_FILE).unlink(missing_ok=True)  # TorchServe removes it on --stop too
    pid_file.unlink(missing_ok=True)
    print("raytorch torchserve has stopped.")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``raytorch torchserve``."""
    args = build_parser().parse_args(argv)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"raytorch {version('raytorch')} (TorchServe 0.12 command line)")
        except PackageNotFoundError:
            print("raytorch (from a checkout; TorchServe 0.12 command line)")
        return 0
    if args.stop:
        return stop()
    return start(args)


if __name__ == "__main__":
    sys.exit(main())
