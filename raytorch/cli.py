"""``raytorch``: predict, manage models and build archives from the command line.

Examples::

    raytorch predict kitten.jpg --model densenet161
    raytorch register resnet18.mar --batch-size 8        # shows progress while it loads
    raytorch register customer42.zip --pool small         # into a model pool: loaded on demand
    raytorch list | describe resnet18 all | scale resnet18 --min 2 --max 4
    raytorch set-default resnet18 2.0 | unregister resnet18 1.0
    raytorch traffic resnet18 --split 1.0=90,2.0=10      # a canary; --shadow 3.0, --clear
    raytorch archive --name tiny --factory pkg.mod:make --state-dict w.pth -o tiny.zip
    raytorch serve configs/quickstart.yaml                # what `make serve` runs
    raytorch torchserve --start --ncs --model-store model_store --ts-config config.properties
    raytorch tune configs/quickstart.yaml --target-rps 20   # measure layouts, write the best
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from raytorch.client import DEFAULT_URL, ApiError, Client, find_token

POLL_S = 0.5


def _read_input(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=60) as response:  # the user's own URL
            return response.read()
    return Path(source).read_bytes()


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    result = client.predict(args.model, _read_input(args.input), args.version)
    if isinstance(result, dict) and all(isinstance(v, (int, float)) for v in result.values()):
        for label, probability in list(result.items())[: args.top]:
            print(f"{label}: {probability * 100:.2f}%")
    else:
        print(json.dumps(result, indent=2))
    return 0


def wait_with_progress(client: Client, model: str, version: str | None, timeout_s: float) -> bool:
    """Poll describe until the version is RUNNING or failed, printing its state."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout_s:
        try:
            info = client.request("GET", f"/models/{model}/{version or ''}".rstrip("/"))[1][0]
        except ApiError as exc:
            if exc.status != 404:
                raise
            info = {"status": "REGISTERING", "message": ""}
        line = (
            f"[{time.monotonic() - started:5.1f}s] {model} {info.get('modelVersion', '')}: {info['status']}"
        )
        if info.get("message"):
            line += f" - {info['message']}"
        if line.split("] ", 1)[1] != last:
            print(line, file=sys.stderr)
            last = line.split("] ", 1)[1]
        if info["status"] == "RUNNING" and info.get("workers"):
            return True
        if info["status"] in ("DEPLOY_FAILED", "NOT_DEPLOYED", "LOAD_FAILED", "NO_POOL"):
            return False
        time.sleep(POLL_S)
    print(f"still not ready after {timeout_s:g}s", file=sys.stderr)
    return False


def cmd_register(client: Client, args: argparse.Namespace) -> int:
    params = {
        "url": args.url,
        "model_name": args.name,
        "handler": args.handler,
        "batch_size": args.batch_size,
        "max_batch_delay": args.max_batch_delay,
        "initial_workers": args.workers,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "pool": args.pool,
        "dedicated": "true" if args.dedicated else None,
        "synchronous": "false",
    }
    _, body, _ = client.request("POST", "/models", params)
    print(body["status"], file=sys.stderr)
    if args.no_wait:
        return 0
    name = args.name or Path(args.url.split("?")[0]).stem
    return 0 if wait_with_progress(client, name, args.version, args.timeout) else 1


def cmd_traffic(client: Client, args: argparse.Namespace) -> int:
    path = f"/models/{args.model}/traffic"
    if args.clear:
        return _print(client.request("DELETE", path)[1])
    if args.split is None and args.shadow is None:
        return _print(client.request("GET", path)[1])
    params = {
        # "1.0=90,2.0=10" on the command line; the API's own form is "1.0:90,2.0:10".
        "split": args.split.replace("=", ":") if args.split else None,
        "shadow": args.shadow,
        "shadow_percent": args.shadow_percent,
    }
    return _print(client.request("PUT", path, params)[1])


def _print(body: Any) -> int:
    print(json.dumps(body, indent=2))
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from handlers.archive import write_archive

    source: dict[str, Any] = {}
    files = [Path(f) for f in args.extra_files]
    for key in ("architecture", "weights", "torchscript", "factory", "state_dict"):
        value = getattr(args, key)
        if value is None:
            continue
        path = Path(value)
        if key in ("torchscript", "state_dict", "weights") and path.is_file():
            files.append(path)
            value = path.name
        if key == "factory" and value.split(":")[0].endswith(".py"):
            files.append(Path(value.split(":")[0]))
            value = f"{Path(value.split(':')[0]).name}:{value.split(':')[1]}"
        source[key] = value
    spec: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "handler": args.handler,
        "source": source,
    }
    if args.labels:
        files.append(Path(args.labels))
        spec["labels"] = Path(args.labels).name
    out = write_archive(spec, files, Path(args.output or f"{args.name}.zip"))
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytorch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=DEFAULT_URL, help="server address (default %(default)s)")
    parser.add_argument("--token", help="management token (default: RAYTORCH_TOKEN or the key file)")
    parser.add_argument("--state-dir", help="server state dir holding key_file.json (default .raytorch)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="print the top labels for an image path or URL")
    p.add_argument("input")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--version")
    p.add_argument("--top", type=int, default=5)

    p = sub.add_parser("register", help="register an archive from the model store")
    p.add_argument("url")
    p.add_argument("--name")
    p.add_argument("--version", help="version to wait for (default: the archive's)")
    p.add_argument("--handler")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-batch-delay", type=int, help="milliseconds")
    p.add_argument("--workers", type=int)
    p.add_argument("--num-cpus", type=float)
    p.add_argument("--num-gpus", type=float)
    p.add_argument("--pool", help="register into this model pool (loaded on demand, no replicas of its own)")
    p.add_argument("--dedicated", action="store_true", help="its own replicas, despite a default pool")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--timeout", type=float, default=300)

    sub.add_parser("list", help="list models")
    p = sub.add_parser("describe", help="describe a model version (or 'all')")
    p.add_argument("model")
    p.add_argument("version", nargs="?")
    p = sub.add_parser("scale", help="set workers, or an autoscaling range")
    p.add_argument("model")
    p.add_argument("--version")
    p.add_argument("--min", type=int, required=True)
    p.add_argument("--max", type=int)
    p = sub.add_parser("set-default", help="choose the version /predictions/{model} uses")
    p.add_argument("model")
    p.add_argument("version")
    p = sub.add_parser("traffic", help="show, split or shadow the traffic between a model's versions")
    p.add_argument("model")
    p.add_argument("--split", help="version=weight,... e.g. 1.0=90,2.0=10")
    p.add_argument("--shadow", help="a version that also gets a copy of the requests")
    p.add_argument("--shadow-percent", type=float, default=100.0)
    p.add_argument("--clear", action="store_true", help="back to the default version alone")
    p = sub.add_parser("unregister", help="remove a model version")
    p.add_argument("model")
    p.add_argument("version", nargs="?")

    p = sub.add_parser("archive", help="package a model into a raytorch archive (.zip)")
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="1.0")
    p.add_argument("--handler", default="image_classifier")
    for flag in ("--architecture", "--weights", "--torchscript", "--factory", "--state-dict", "--labels"):
        p.add_argument(flag)
    p.add_argument("--extra-files", nargs="*", default=[])
    p.add_argument("--output", "-o")

    # Both take the rest of the command line as their own (see main()).
    sub.add_parser("serve", help="run a Serve config as `make serve` does (raytorch serve CONFIG -h)")
    sub.add_parser("torchserve", help="TorchServe's command line: --start, --stop, config.properties")
    # Parsed by raytorch.tune (see `raytorch tune --help`); listed here for the overview.
    p = sub.add_parser("tune", help="measure layouts of a config on this machine and write the best")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raytorch`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the server itself: its own flags, no client options
        from raytorch import launch

        return launch.main(argv[1:])
    if argv[:1] == ["torchserve"]:
        from raytorch import torchserve_cli

        return torchserve_cli.main(argv[1:])
    if argv[:1] == ["tune"]:  # its own options (and --help); it starts its own server
        from raytorch.tune import main as tune

        return tune(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "tune":  # after global options, which it does not use
        from raytorch.tune import main as tune

        return tune(args.args)
    if args.command == "archive":
        return cmd_archive(args)
    client = Client(args.server, find_token(args.token, args.state_dir))
    version = f"/{args.version}" if getattr(args, "version", None) else ""
    try:
        if args.command == "predict":
            return cmd_predict(client, args)
        if args.command == "register":
            return cmd_register(client, args)
        if args.command == "list":
            return _print(client.request("GET", "/models")[1])
        if args.command == "describe":
            return _print(client.request("GET", f"/models/{args.model}{version}")[1])
        if args.command == "scale":
            params = {"min_worker": args.min, "max_worker": args.max, "synchronous": "true"}
            return _print(client.request("PUT", f"/models/{args.model}{version}", params)[1])
        if args.command == "set-default":
            return _print(client.request("PUT", f"/models/{args.model}/{args.version}/set-default")[1])
        if args.command == "traffic":
            return cmd_traffic(client, args)
        if args.command == "unregister":
            return _print(client.request("DELETE", f"/models/{args.model}{version}")[1])
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
