"""Generate a KubeRay ``RayService`` manifest from one of our Serve config files.

The Serve config stays the single source of truth: the manifest embeds it as
``spec.serveConfigV2`` (a YAML string), so there is no second hand-maintained copy.

    python -m raytorch.kuberay configs/densenet.yaml --image REGISTRY/raytorch:0.1.0 \\
        --gpu-workers 1 > rayservice.yaml
    kubectl apply -f rayservice.yaml

The image must contain this project (``pip install .`` on a ``rayproject/ray:2.60.0`` base,
with the Makefile's torch pins). Ray is imported only to validate the input, inside
:func:`check_serve_config`, so building a manifest needs PyYAML alone.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RAY_VERSION = "2.60.0"
PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080, "grpc": 7070}


@dataclass(frozen=True)
class ClusterShape:
    """Pods of the Ray cluster: one head, CPU workers, optionally GPU workers."""

    image: str
    gpu_workers: int = 0
    max_gpu_workers: int | None = None
    gpus_per_worker: int = 1
    cpu_workers: int = 1
    max_cpu_workers: int | None = None
    head_resources: tuple[str, str] = ("2", "8Gi")  # cpu, memory
    worker_resources: tuple[str, str] = ("4", "16Gi")


def check_serve_config(config: dict[str, Any]) -> None:
    """Raise if ``config`` is not a valid Serve config whose apps take our typed args."""
    from ray.serve.schema import ServeDeploySchema

    from deployments.common.management_args import ManagementArgs
    from deployments.common.settings import IngressArgs, ModelAppArgs, PoolArgs

    ServeDeploySchema.model_validate(config)
    builders = {
        "build_model": ModelAppArgs,
        "build_ingress": IngressArgs,
        "build_management": ManagementArgs,
        "build_pool": PoolArgs,
    }
    for app in config["applications"]:
        args_type = builders.get(app["import_path"].rsplit(":", 1)[-1])
        if args_type is not None:
            args_type.model_validate(app.get("args", {}))


def serve_config_for_pods(config: dict[str, Any]) -> dict[str, Any]:
    """The Serve config as it must run in a pod: same applications, listening on all interfaces.

    Our configs bind 127.0.0.1 for laptops; in a pod the Kubernetes Service connects to the
    pod IP, so a loopback-only proxy would never be reached.
    """
    pod_config = copy.deepcopy(config)
    pod_config["http_options"] = {**(pod_config.get("http_options") or {}), "host": "0.0.0.0"}
    pod_config["http_options"]["port"] = PORTS["serve"]
    # The ingress serves gRPC on the HTTP host (when its args say `grpc: true`) at this port.
    pod_config["grpc_options"] = {**(pod_config.get("grpc_options") or {}), "port": PORTS["grpc"]}
    return pod_config


def _container(name: str, image: str, cpu: str, memory: str, ports: list[str], gpus: int = 0) -> dict:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus  # KubeRay passes it to `ray start --num-gpus`
    return {
        "name": name,
        "image": image,
        "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory}},
        "ports": [{"containerPort": PORTS[p], "name": p} for p in ports],
    }


def _worker_group(name: str, shape: ClusterShape, replicas: int, max_replicas: int | None, gpus: int) -> dict:
    container = _container("ray-worker", shape.image, *shape.worker_resources, ["metrics"], gpus)
    return {
        "groupName": name,
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": max(replicas, max_replicas or replicas),
        "rayStartParams": {"metrics-export-port": str(PORTS["metrics"])},
        "template": {"spec": {"containers": [container]}},
    }


def placement_warnings(config: dict[str, Any], shape: ClusterShape) -> list[str]:
    """Model apps whose GPU request does not fit the cluster shape, said in words."""
    warnings = []
    has_gpus = bool(shape.gpu_workers or shape.max_gpu_workers)
    for app in config["applications"]:
        resources = (app.get("args") or {}).get("resources") or {}
        if not resources.get("num_gpus"):
            continue
        policy = resources.get("gpu_policy", "auto")
        if not has_gpus and policy == "required":
            warnings.append(f"{app['name']}: gpu_policy required but no GPU workers: it would pend forever")
        elif not has_gpus:
            warnings.append(f"{app['name']}: asks for GPUs but no GPU workers: it will run on CPU")
        elif policy == "auto":
            # `auto` decides once, when the app is built: a GPU pod still starting then
            # (image pulls take minutes) is not used, and the replica runs on CPU.
            warnings.append(
                f"{app['name']}: gpu_policy auto runs on CPU if no GPU worker has joined when KubeRay "
                "deploys; gpu_policy required waits for one (and lets the autoscaler add it)"
            )
    return warnings


class LiteralStr(str):
    """A string dumped as a YAML block scalar (``|``), so serveConfigV2 stays readable."""


class _ManifestDumper(yaml.SafeDumper):
    pass


_ManifestDumper.add_representer(
    LiteralStr, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
)


def rayservice(config: dict[str, Any], name: str, shape: ClusterShape) -> dict[str, Any]:
    """The RayService object (a dict) serving ``config`` on a cluster of ``shape``."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ValueError(f"{name!r} is not a Kubernetes name (lowercase letters, digits, '-')")
    serve_config = yaml.safe_dump(serve_config_for_pods(config), sort_keys=False)
    head_start = {
        # The KubeRay operator applies serveConfigV2 through the dashboard, from its own pod.
        "dashboard-host": "0.0.0.0",
        "metrics-export-port": str(PORTS["metrics"]),
    }
    head = _container("ray-head", shape.image, *shape.head_resources, list(PORTS))
    groups = []
    if shape.cpu_workers or shape.max_cpu_workers:
        groups.append(_worker_group("cpu-workers", shape, shape.cpu_workers, shape.max_cpu_workers, 0))
    if shape.gpu_workers or shape.max_gpu_workers:
        gpus = shape.gpus_per_worker
        groups.append(_worker_group("gpu-workers", shape, shape.gpu_workers, shape.max_gpu_workers, gpus))
    autoscale = any(g["maxReplicas"] > g["minReplicas"] for g in groups)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "raytorch"}},
        "spec": {
            "serveConfigV2": LiteralStr(serve_config),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": autoscale,
                # KubeRay >= 1.5.1 generates a token Secret and sets RAY_AUTH_MODE on every pod.
                "authOptions": {"mode": "token"},
                "headGroupSpec": {"rayStartParams": head_start, "template": {"spec": {"containers": [head]}}},
                "workerGroupSpecs": groups,
            },
        },
    }


def render(manifest: dict[str, Any], source: str) -> str:
    """The manifest as YAML text, with a header naming the file it came from."""
    header = (
        f"# Generated from {source} by `python -m raytorch.kuberay`: edit the Serve config\n"
        "# and regenerate instead of editing this file.\n"
    )
    return header + yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the RayService manifest for a Serve config file."""
    parser = argparse.ArgumentParser(prog="python -m raytorch.kuberay", description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="a Serve config file, e.g. configs/densenet.yaml")
    parser.add_argument("--image", required=True, help="an image with this project installed")
    parser.add_argument("--name", help="RayService name (default: raytorch-<config file name>)")
    parser.add_argument("--gpu-workers", type=int, default=0, help="GPU worker pods (default 0)")
    parser.add_argument("--max-gpu-workers", type=int, help="autoscale GPU workers up to this many")
    parser.add_argument("--gpus-per-worker", type=int, default=1, help="nvidia.com/gpu per GPU pod")
    parser.add_argument("--cpu-workers", type=int, default=1, help="CPU worker pods (default 1)")
    parser.add_argument("--max-cpu-workers", type=int, help="autoscale CPU workers up to this many")
    args = parser.parse_args(argv)
    if min(args.gpu_workers, args.cpu_workers) < 0 or args.gpus_per_worker < 1:
        parser.error("worker counts must be >= 0 and --gpus-per-worker >= 1")
    config = yaml.safe_load(args.config.read_text())
    try:
        check_serve_config(config)
    except ValueError as exc:  # pydantic's ValidationError names the field at fault
        print(f"error: {args.config} is not a valid Serve config of this project:\n{exc}", file=sys.stderr)
        return 2
    name = args.name or "raytorch-" + re.sub(r"[^a-z0-9-]+", "-", args.config.stem.lower()).strip("-")
    shape = ClusterShape(
        image=args.image,
        gpu_workers=args.gpu_workers,
        max_gpu_workers=args.max_gpu_workers,
        gpus_per_worker=args.gpus_per_worker,
        cpu_workers=args.cpu_workers,
        max_cpu_workers=args.max_cpu_workers,
    )
    for warning in placement_warnings(config, shape):
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(render(rayservice(config, name, shape), str(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
