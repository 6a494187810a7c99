"""The wheel `python -m build` makes holds everything a user who installs it needs.

Built from a copy of this checkout (sdist, then the wheel from the sdist, as `python -m build`
does; `--no-isolation`: the build backend comes from this environment, nothing is downloaded;
a copy, so the build's .egg-info stays out of the checkout, where it would tell pip that
raytorch is installed wherever the checkout is on PYTHONPATH), then
installed with `--no-deps` into a fresh venv made with `python -m venv`. Third-party packages
come from this environment's site-packages through a .pth line (raytorch's own files cannot:
that folder's .pth files, the editable install among them, are not read from a plain path
line). Everything then runs from a folder outside the checkout with no PYTHONPATH, so a file
the wheel lacks is an ImportError or a missing file here, not something the checkout hides.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.e2e.serve_cluster import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
PACKAGES = ("handlers", "deployments", "raytorch")
# What a checkout holds that is not its source (.gitignore's entries and git's own folder).
LOCAL_ONLY = (
    ".git",
    ".venv",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "build",
    "dist",
    ".raytorch",
    "model_store",
)

# Run by the venv's python from outside the checkout: import every module of the installed
# package, and use the package data the server reads.
CHECK = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from pathlib import Path

    site = Path(sys.argv[1])
    imported, outside = [], []
    for top in ("handlers", "deployments", "raytorch"):
        package = importlib.import_module(top)
        names = [top] + [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")]
        for name in names:
            module = importlib.import_module(name)
            imported.append(name)
            if not Path(module.__file__).resolve().is_relative_to(site):
                outside.append(module.__file__)

    from deployments import protos
    from raytorch import launch, prometheus
    from handlers.assets import __path__ as assets

    data = {
        "imported": imported,
        "outside": outside,
        "protos": sorted(f.name for f in protos.descriptor_set().file if f.name in protos.PROTO_FILES),
        "labels": len(json.loads((Path(assets[0]) / "salient_labels.json").read_text())),
        "quickstart": str(launch.config_file("configs/quickstart.yaml")),
        "prometheus": sorted(job["job_name"] for job in prometheus.scrape_config(1, 2)["scrape_configs"]),
    }
    print(json.dumps(data))
    """
)


def checkout_modules() -> set[str]:
    """The module names of the checkout's packages (what the wheel must hold)."""
    found = set()
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the wheel, the venv's python, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    skip = shutil.ignore_patterns(*LOCAL_ONLY)
    shutil.copytree(ROOT, tmp / "src", symlinks=True, ignore=skip)
    built = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), "."], tmp / "src"
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("raytorch-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    done = run([*install, str(wheel)], tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    (site / "third_party.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, python, work


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_every_module_and_file_of_the_checkout(installed: tuple[Path, Path, Path]) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        ".".join(
            Path(name).with_suffix("").parts[:-1]
            if name.endswith("__init__.py")
            else Path(name).with_suffix("").parts
        )
        for name in names
        if name.endswith(".py")
    }
    assert checkout_modules() - modules == set()
    for data in (
        "handlers/assets/salient_labels.json",
        "deployments/protos/torchserve/inference.proto",
        "deployments/protos/torchserve/management.proto",
        "deployments/protos/open_inference/open_inference_grpc.proto",
        "raytorch/configs/quickstart.yaml",
        "raytorch/configs/prometheus.yml",
    ):
        assert data in names, data


def test_the_installed_commands_run_outside_the_checkout(installed: tuple[Path, Path, Path]) -> None:
    _, python, work = installed
    raytorch = python.parent / "raytorch"
    for command, expected in [
        ([raytorch, "--help"], "torchserve"),
        ([raytorch, "serve", "--help"], "--metrics-port"),
        ([raytorch, "torchserve", "--help"], "--ts-config"),
    ]:
        done = run([str(part) for part in command], work)
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
    site = Path(
        run(
            [
                str(python),
                "-c",
                "import raytorch, pathlib; print(pathlib.Path(raytorch.__file__).parents[1])",
            ],
            work,
        ).stdout.strip()
    )
    done = run([str(python), "-c", CHECK, str(site)], work)
    assert done.returncode == 0, done.stderr[-5000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["outside"] == [], "modules imported from outside the installed wheel"
    assert set(found["imported"]) >= checkout_modules()
    assert found["protos"] == sorted(
        [
            "open_inference/open_inference_grpc.proto",
            "torchserve/inference.proto",
            "torchserve/management.proto",
        ]
    )
    assert found["labels"] > 0
    assert Path(found["quickstart"]).is_relative_to(site)
    assert found["prometheus"] == ["ray", "raytorch"]
