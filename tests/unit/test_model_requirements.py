"""Per-model Python dependencies (TorchServe's install_py_dep_per_model): a .mar's
requirements file becomes its replicas' Ray runtime_env (pip), checked at registration.

Nothing is installed here (tests never download): these tests check the wiring, i.e. the
deployment options carry the pip list, and a bad file is a 400 before anything deploys.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployments.common.settings import ManagementArgs, ResourcesConfig
from deployments.management.manager import ModelManager
from deployments.management.pools import PoolManager
from deployments.management.register_params import RegisterParams, app_args
from deployments.model.builder import actor_options
from handlers.archive import extract, read_extracted
from handlers.errors import BadInputError
from handlers.requirements import parse_requirements
from tests.fixtures import torchserve_archives as ts
from tests.fixtures.management import FakeServe


def noop_with_requirements(store: Path, work: Path, requirements: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    (work / "service.py").write_text(ts.NOOP_CLASS)
    (work / "requirements.txt").write_text(requirements)
    return ts.archive(store, work, "deps", "1.0", "service.py", requirements_file="requirements.txt")


def test_requirement_lines_are_checked() -> None:
    text = "# pinned\nsix==1.16.0\n\nattrs >=22, <24  # for the handler\ntomli; python_version < '3.11'\n"
    assert parse_requirements(text) == ["six==1.16.0", "attrs<24,>=22", 'tomli; python_version < "3.11"']
    for line, problem in [
        ("-r other.txt", "pip options are not accepted"),
        ("--index-url http://evil/simple", "pip options are not accepted"),
        ("pkg @ https://example.com/pkg.whl", "from URLs or paths are not accepted"),
        ("not a requirement!!", "is not a valid requirement"),
    ]:
        with pytest.raises(BadInputError, match=problem) as info:
            parse_requirements(f"six\n{line}\n")
        assert "requirements.txt line 2" in info.value.message and info.value.status == 400


def test_the_archives_requirements_become_its_replicas_runtime_env(tmp_path: Path) -> None:
    archive = noop_with_requirements(tmp_path / "store", tmp_path / "w", "six==1.16.0\nattrs\n")
    found = read_extracted(extract(archive, tmp_path / "x"))
    assert found.requirements is not None and found.requirements.name == "requirements.txt"
    params = RegisterParams(url=archive.name)
    args = app_args(found, params, install_py_dep_per_model=True)
    assert args.resources.pip_packages == ["six==1.16.0", "attrs"]
    options = actor_options(args.resources, 0)
    assert options["runtime_env"] == {"pip": {"packages": ["six==1.16.0", "attrs"], "pip_check": False}}
    # TorchServe's default (false): the file is ignored, the replicas get no runtime_env.
    plain = app_args(found, params)
    assert plain.resources.pip_packages == [] and "runtime_env" not in actor_options(plain.resources, 0)
    # A pool replica's environment is every pooled model's: no packages of its own there.
    with pytest.raises(BadInputError, match="a pooled model cannot have"):
        asyncio.run(PoolManager._no_own_packages(args))
    asyncio.run(PoolManager._no_own_packages(plain))


def test_a_bad_requirements_file_fails_the_registration_with_400(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = noop_with_requirements(store, tmp_path / "w", "six\n-e git+https://example.com/x.git\n")
    settings = ManagementArgs(
        state_dir=str(tmp_path / "state"),
        model_store=str(store),
        propagation_s=0,
        install_py_dep_per_model=True,
    )
    manager = ModelManager(settings, FakeServe())
    with pytest.raises(BadInputError, match=r"requirements\.txt line 2"):
        asyncio.run(manager.register(RegisterParams(url=archive.name)))
    assert manager.store.defaults() == {}


def test_resources_without_packages_need_no_runtime_env() -> None:
    assert actor_options(ResourcesConfig(num_cpus=0.5), 1) == {"num_cpus": 0.5, "num_gpus": 1}
