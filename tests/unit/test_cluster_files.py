"""cluster.yaml and generated RayService manifests, checked with Ray's own validation.

No cloud access: the launcher config goes through the same ``prepare_config`` and
``validate_config`` (Ray's JSON schema plus its node-type checks) that ``ray up`` runs before
it talks to AWS.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from raytorch.kuberay import ClusterShape, check_serve_config, placement_warnings, rayservice, render
from tests.fixtures.specs import ROOT

CLUSTER_YAML = ROOT / "cluster.yaml"


def launcher_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validated(config: dict) -> dict:
    """What ``ray up`` would work with: defaults merged, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_launcher_validation() -> None:
    prepared = validated(launcher_config())
    assert prepared["provider"]["type"] == "aws"
    # Our commands replace the defaults' (which would install a Ray nightly wheel).
    assert not any("ray-wheels" in c for c in prepared["setup_commands"])
    assert prepared["head_setup_commands"][: len(prepared["setup_commands"])] == prepared["setup_commands"]


@pytest.mark.parametrize(
    ("path", "typo"),
    [((), "max_worker"), (("available_node_types", "gpu_worker"), "min_worker")],
    ids=["top level", "node type"],
)
def test_a_typo_fails_the_same_validation(path: tuple[str, ...], typo: str) -> None:
    config = launcher_config()
    section = config
    for key in path:
        section = section[key]
    section[typo] = 1
    with pytest.raises(jsonschema.ValidationError, match=typo):
        validated(config)


def test_min_workers_above_the_global_cap_is_refused() -> None:
    config = launcher_config()
    config["available_node_types"]["gpu_worker"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validated(config)


def test_gpu_workers_exist_from_the_start() -> None:
    types = launcher_config()["available_node_types"]
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    # densenet.yaml's gpu_policy auto decides at deploy time: a GPU must be there by then.
    assert gpu and sum(t.get("min_workers", 0) for t in gpu) >= 1
    assert types[launcher_config()["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_start_commands_bind_and_expose_what_the_docs_say() -> None:
    config = launcher_config()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--head" in head and "--port=6379" in head
    assert "--dashboard-host=127.0.0.1" in head, "dashboard only through `ray dashboard` tunnels"
    for command in (head, worker):
        assert "--metrics-export-port=8080" in command
        assert "RAY_AUTH_MODE=token" in command
    assert "--address=$RAY_HEAD_IP:6379" in worker


def test_nodes_install_this_project_with_the_makefile_torch_pins() -> None:
    config = launcher_config()
    pins = re.search(r"^TORCH_PINS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pins
    setup = "\n".join(config["setup_commands"])
    assert f"pip install -q {pins.group(1)}" in setup
    assert "pip install -q -e ." in setup
    remote, local = next((r, loc) for r, loc in config["file_mounts"].items() if r.endswith("raytorch"))
    assert Path(local) == Path("."), "the repository root, where `ray up` is run"
    assert all(remote in c for c in setup.splitlines() if "-e ." in c)


# --- KubeRay RayService manifests generated from our Serve configs -------------------------

SERVE_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def generate(*args: str) -> subprocess.CompletedProcess:
    """Run the generator's command line the way a user does."""
    return subprocess.run(
        [sys.executable, "-m", "raytorch.kuberay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("config_path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_v2_is_the_input_config(config_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(config_path.read_text())
    manifest = rayservice(config, "raytorch-test", ClusterShape(image="img", gpu_workers=1))
    embedded_text = manifest["spec"]["serveConfigV2"]
    assert isinstance(embedded_text, str), "KubeRay takes serveConfigV2 as a YAML string"
    embedded = yaml.safe_load(embedded_text)
    assert embedded["applications"] == config["applications"]
    assert embedded["proxy_location"] == config["proxy_location"]
    ServeDeploySchema.model_validate(embedded)
    check_serve_config(embedded)
    # The only change: the proxy listens where the Kubernetes Service can reach it.
    assert embedded["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_command_prints_a_complete_rayservice() -> None:
    result = generate("configs/densenet.yaml", "--image", "registry.example/raytorch:0.1.0",
                      "--gpu-workers", "1", "--max-gpu-workers", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Generated from configs/densenet.yaml")
    manifest = yaml.safe_load(result.stdout)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"] == "raytorch-densenet"
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == importlib.metadata.version("ray"), "images must match the clients' Ray"
    assert cluster["enableInTreeAutoscaling"] is True  # GPU workers may grow from 1 to 3
    head = cluster["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"] == "registry.example/raytorch:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert {ports["serve"], ports["dashboard"], ports["metrics"]} == {8000, 8265, 8080}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu-workers"]
    assert gpu["minReplicas"] == gpu["replicas"] == 1 and gpu["maxReplicas"] == 3
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(groups["cpu-workers"]) + str(head)
    for params in [head["rayStartParams"], *(g["rayStartParams"] for g in groups.values())]:
        assert params["metrics-export-port"] == "8080"
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"
    assert "gpu_policy auto" in result.stderr, "densenet's auto policy is worth a warning on a cluster"


def test_no_gpu_group_unless_asked() -> None:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    manifest = rayservice(config, "quick", ClusterShape(image="img"))
    assert "nvidia.com/gpu" not in render(manifest, "quickstart.yaml")
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["cpu-workers"]
    assert placement_warnings(config, ClusterShape(image="img")) == []


def test_required_gpus_without_gpu_workers_are_called_out() -> None:
    config = yaml.safe_load((ROOT / "configs" / "densenet.yaml").read_text())
    densenet = next(a for a in config["applications"] if a["name"] == "densenet161")
    densenet["args"]["resources"]["gpu_policy"] = "required"
    (warning,) = placement_warnings(config, ClusterShape(image="img"))
    assert "densenet161" in warning and "pend forever" in warning


def test_an_invalid_config_produces_no_manifest(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs" / "densenet.yaml").read_text())
    densenet = next(a for a in config["applications"] if a["name"] == "densenet161")
    densenet["args"]["model"]["top_kk"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = generate(str(path), "--image", "img")
    assert result.returncode != 0 and result.stdout == ""
    assert "top_kk" in result.stderr and "Traceback" not in result.stderr


def test_names_must_be_kubernetes_names() -> None:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    with pytest.raises(ValueError, match="Kubernetes name"):
        rayservice(config, "Raytorch_Densenet", ClusterShape(image="img"))


def test_generator_does_not_need_ray_to_build_a_manifest() -> None:
    code = "import sys, raytorch.kuberay; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
